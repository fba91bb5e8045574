// Shared by every CUDA kernel: index type, 16-bit types, widening, the index-check report (and,
// through keys.h, the sortable candidate key). Nothing here knows about Python or torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "keys.h"

namespace sae_cuda {

using index_t = int64_t;  // all index math is 64-bit: N * d_sae routinely exceeds 2^31

template <class T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float(float v) { return v; }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// widen<Acc>(w): a stored weight as the accumulation type (float or double).
template <class Acc, class W> __device__ __forceinline__ Acc widen(W w) { return Acc(to_float(w)); }
template <> __device__ __forceinline__ double widen<double, double>(double w) { return w; }
template <> __device__ __forceinline__ float widen<float, float>(float w) { return w; }

// ---- index checks ----------------------------------------------------------------------------
// Kernels that read rows by index skip any index outside [-1, rows) (never reading out of bounds)
// and count it here: report[0] = how many, report[1] = one such index. Python raises when the
// count is non-zero.
__device__ __forceinline__ bool index_ok(int64_t idx, int64_t rows, unsigned long long* report) {
  if (idx >= -1 && idx < rows) return true;
  if (report != nullptr) {
    atomicAdd(&report[0], 1ull);
    report[1] = static_cast<unsigned long long>(idx);
  }
  return false;
}

// relu as torch computes it: NaN stays NaN.
template <class T> __device__ __forceinline__ T relu_keep_nan(T v) { return v > T(0) || v != v ? v : T(0); }

}  // namespace sae_cuda
