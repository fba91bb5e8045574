// The clamp arithmetic of steering, one definition for the CPU kernels, the CUDA kernels (host and
// device) and Python (which reads the mode codes from the modules: sae_native._C.CLAMP_MODES; its
// torch version of the formula, for autograd, is in python/sae_native/_clamp.py).
//
// For a clamped feature with activation z and target c:
//   set:   delta = c - z        scale: delta = (c - 1) * z        add: delta = c
// and with only_active (where="active") delta is 0 wherever z <= 0 (or z is NaN).
#pragma once

#if defined(__CUDACC__)
#define SAE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SAE_HOST_DEVICE inline
#endif

namespace sae {

enum class ClampMode : int { set = 0, scale = 1, add = 2 };

template <class T> SAE_HOST_DEVICE T clamp_delta(T z, T c, ClampMode mode, bool only_active) {
  if (only_active && !(z > T(0))) return T(0);
  switch (mode) {
    case ClampMode::set: return c - z;
    case ClampMode::scale: return (c - T(1)) * z;
    case ClampMode::add: return c;
  }
  return T(0);
}

}  // namespace sae
