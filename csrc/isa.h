// Which encode micro-kernel runs: chosen once at import from the CPU's features.
#pragma once

#include <string>
#include <vector>

#include "isa_kernels.h"

namespace sae {

// The variant in use. Initially the best the CPU supports, or the one named by the environment
// variable SAE_NATIVE_ISA if that is supported (a way to test lower variants).
const IsaKernels& active_kernels();

// Names of the variants compiled in and supported by this CPU, best first.
std::vector<std::string> supported_isas();

// Switches the variant (tests run every supported one). Returns false if `name` is not
// compiled in or not supported by this CPU.
bool select_isa(const std::string& name);

// CPU features seen at import, for build_info().
std::vector<std::string> cpu_features();

}  // namespace sae
