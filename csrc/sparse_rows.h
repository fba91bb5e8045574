// Sparse row kernels: decode and the pieces of its (and encode's) backward pass.
//
// A code is (value, latent) pairs per row. Latents outside [0, w.rows) -- the -1 padding of
// threshold codes -- are skipped, so no kernel here can read or write out of bounds.
#pragma once

#include <atomic>

#include "common.h"

namespace sae {

// Latents outside [-1, rows) found in a kernel's indices (-1 is padding). Kernels skip them and
// report them here, so the caller can raise an error without a separate pass over the indices
// (a torch reduction there would wake torch's OpenMP threads, which then spin on the cores our
// kernel needs). Safe to fill from several threads.
class IndexCheck {
 public:
  void scan(const index_t* indices, index_t count, index_t rows) {
    for (index_t j = 0; j < count; ++j) {
      const index_t f = indices[j];
      if (f < -1 || f >= rows) note(f);
    }
  }
  void note(index_t f) {
    if (count_.fetch_add(1) == 0) example_.store(f);
  }
  index_t count() const { return count_.load(); }
  index_t example() const { return example_.load(); }

 private:
  std::atomic<index_t> count_{0};
  std::atomic<index_t> example_{0};
};

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
                  const Strided<W>& w, const T* bias, T* out, IndexCheck* check);

// out[r, j] = <g[r], w.row(indices[r, j])>; 0 for padding.     (decode's value gradient)
template <class T, class W>
void dot_rows(index_t n, index_t k, const T* g, const index_t* indices, const Strided<W>& w,
              T* out, IndexCheck* check);

// grad.row(indices[r, j]) += values[r, j] * g[r] for every (r, j); grad is [rows, d] with the
// given strides and must be zero-initialised by the caller.  (W_dec / W_enc gradients)
// `check` (nullable) collects out-of-range latents in every kernel here.
template <class T>
void scatter_rows(index_t n, index_t k, const T* values, const index_t* indices, const T* g,
                  index_t d, T* grad, index_t rows, index_t row_stride, index_t col_stride,
                  IndexCheck* check);

}  // namespace sae
