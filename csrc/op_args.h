// How Python hands tensors to either native module (sae_native._C and sae_native._cuda): the same
// small structs, built by python/sae_native/backends/native_args.py, instead of long lists of
// positional pointers and sizes. Plain data; nothing here is checked. The ops' contract has been
// checked in Python (backends/contract.py), and the kernels never read outside what these
// describe for any index or clamp feature values (they skip and report bad ones).
#pragma once

#include <cstdint>

namespace sae {

// A 2-D tensor (a vector is one row): element (r, c) at data + (r * row_stride + c * col_stride)
// elements of `dtype` (csrc/dtype.h). data 0 marks an absent optional input.
struct Mat {
  std::uintptr_t data = 0;
  int dtype = 0;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
};

// The clamp of a steering op: `count` int64 features and their targets (in the activations'
// dtype), the mode (csrc/clamp.h) and where="active".
struct ClampArgs {
  std::uintptr_t features = 0, targets = 0;
  int64_t count = 0;
  int mode = 0;
  bool only_active = false;
};

}  // namespace sae
