// Sparse row kernels: decode and the pieces of its (and encode's) backward pass.
//
// A code is (value, latent) pairs per row. Latents outside [0, w.rows) -- the -1 padding of
// threshold codes -- are skipped, so no kernel here can read or write out of bounds.
#pragma once

#include "common.h"

namespace sae {

// o += sum_j values[j] * w.row(indices[j]) for one row of k codes.
template <class T, class W>
inline void accumulate_row(index_t k, const T* values, const index_t* indices, const Strided<W>& w,
                           T* o) {
  const index_t d = w.cols;
  for (index_t j = 0; j < k; ++j) {
    const index_t f = indices[j];
    const T v = values[j];
    // v == 0 adds nothing (the dense product's 0 * W too, for finite W); NaN still adds.
    if (f < 0 || f >= w.rows || v == T(0)) continue;
    const W* src = w.row(f);
    if (w.col_stride == 1) {
      for (index_t i = 0; i < d; ++i) o[i] += v * widen<T>(src[i]);
    } else {
      for (index_t i = 0; i < d; ++i) o[i] += v * widen<T>(src[i * w.col_stride]);
    }
  }
}

// out[r] = bias + sum_j values[r, j] * w.row(indices[r, j])    (bias may be null)
// Decode is this with w = W_dec; encode's input gradient is this with w = W_enc transposed.
template <class T, class W>
void combine_rows(index_t n, index_t k, const T* values, const index_t* indices,
                  const Strided<W>& w, const T* bias, T* out);

// out[r, j] = <g[r], w.row(indices[r, j])>; 0 for padding.     (decode's value gradient)
template <class T, class W>
void dot_rows(index_t n, index_t k, const T* g, const index_t* indices, const Strided<W>& w,
              T* out);

// grad.row(indices[r, j]) += values[r, j] * g[r] for every (r, j); grad is [rows, d] with the
// given strides and must be zero-initialised by the caller.  (W_dec / W_enc gradients)
template <class T>
void scatter_rows(index_t n, index_t k, const T* values, const index_t* indices, const T* g,
                  index_t d, T* grad, index_t rows, index_t row_stride, index_t col_stride);

}  // namespace sae
