// Which encode micro-kernel runs: chosen once at import from the CPU's features.
#pragma once

#include <string>
#include <vector>

#include "isa_kernels.h"

namespace sae {

// The variant in use. Initially the best the CPU supports; the package applies the environment
// variable SAE_NATIVE_ISA at import through select_isa (a way to test lower variants).
const IsaKernels& active_kernels();

// Names of every variant compiled in, whether or not this CPU supports it.
std::vector<std::string> compiled_isas();

// Names of the variants compiled in and supported by this CPU, best first.
std::vector<std::string> supported_isas();

// Switches the variant (tests run every supported one). Returns false if `name` is not
// compiled in or not supported by this CPU.
bool select_isa(const std::string& name);

// CPU features seen at import, for build_info().
std::vector<std::string> cpu_features();

}  // namespace sae
