// Element type codes, shared by the CPU module, the CUDA module and Python (which reads them from
// the modules: sae_native._C.DTYPES). One definition for all three.
#pragma once

namespace sae {

enum class DType : int { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };

}  // namespace sae
