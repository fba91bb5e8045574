#include "sparse_rows.h"

#include <algorithm>
#include <type_traits>

#include "interrupt.h"
#include "isa.h"
#include "thread_pool.h"

namespace sae {
namespace {

// How many weight rows ahead the decode row kernels prefetch (isa_kernels_portable.h).
constexpr index_t kDecodeAheadRows = 8;

// Rows per task: enough work per task to amortise the pool's hand-off.
index_t row_grain(index_t k, index_t d) { return std::max<index_t>(1, 16384 / std::max<index_t>(k * d, 1)); }

}  // namespace

template <class T, class W>
void combine_rows(index_t n, index_t k, const T* values, const index_t* indices,
                  const Strided<W>& w, const T* bias, T* out, IndexCheck* check) {
  const index_t d = w.cols;
  if constexpr (std::is_same<T, float>::value) {
    if (w.col_stride == 1) {  // the common case: W_dec rows contiguous -> the ISA's row kernel
      const DecodeRowFn<W> row = decode_row_of<W>(active_kernels());
      const index_t threads = num_threads();
      if (n < 2 * threads && d >= 512) {
        // A few rows (token-by-token generation): split the columns too, or most threads idle.
        const index_t splits = std::min<index_t>((2 * threads + n - 1) / n, d / 256);
        const index_t width = (d / splits + 15) / 16 * 16;
        if (check != nullptr) check->scan(indices, n * k, w.rows);
        parallel_for(n * splits, [&](index_t t) {
          const index_t r = t / splits, c0 = (t % splits) * width;
          if (c0 >= d) return;
          row(k, values + r * k, indices + r * k, k, w.data + c0, w.rows, w.row_stride, std::min(width, d - c0),
              bias != nullptr ? bias + c0 : nullptr, out + r * d + c0);
        });
        return;
      }
      parallel_range(n, row_grain(k, d), [&](index_t r0, index_t r1) {
        if (check != nullptr) check->scan(indices + r0 * k, (r1 - r0) * k, w.rows);
        // The first rows of this range; the row kernel prefetches the rest as it goes.
        for (index_t j = 0; j < std::min<index_t>(kDecodeAheadRows, (r1 - r0) * k); ++j) {
          const index_t f = indices[r0 * k + j];
          if (f >= 0 && f < w.rows)
            for (index_t b = 0; b < d * index_t(sizeof(W)); b += 64)
              __builtin_prefetch(reinterpret_cast<const char*>(w.row(f)) + b, 0, 3);
        }
        for (index_t r = r0; r < r1 && !interrupted(); ++r)
          row(k, values + r * k, indices + r * k, (r1 - r) * k, w.data, w.rows, w.row_stride, d, bias, out + r * d);
      });
      return;
    }
  }
  parallel_range(n, row_grain(k, d), [&](index_t r0, index_t r1) {
    if (check != nullptr) check->scan(indices + r0 * k, (r1 - r0) * k, w.rows);
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      T* o = out + r * d;
      if (bias != nullptr)
        std::copy(bias, bias + d, o);
      else
        std::fill(o, o + d, T(0));
      accumulate_row(k, values + r * k, indices + r * k, w, o);
    }
  });
}

template <class T, class W>
void dot_rows(index_t n, index_t k, const T* g, const index_t* indices, const Strided<W>& w,
              T* out, IndexCheck* check) {
  const index_t d = w.cols;
  if constexpr (std::is_same<T, float>::value) {
    if (w.col_stride == 1) {
      const DotRowFn<W> row = dot_row_of<W>(active_kernels());
      parallel_range(n, row_grain(k, d), [&](index_t r0, index_t r1) {
        if (check != nullptr) check->scan(indices + r0 * k, (r1 - r0) * k, w.rows);
        for (index_t r = r0; r < r1 && !interrupted(); ++r)
          row(k, g + r * d, indices + r * k, w.data, w.rows, w.row_stride, d, out + r * k);
      });
      return;
    }
  }
  parallel_range(n, row_grain(k, d), [&](index_t r0, index_t r1) {
    if (check != nullptr) check->scan(indices + r0 * k, (r1 - r0) * k, w.rows);
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      const T* gr = g + r * d;
      for (index_t j = 0; j < k; ++j) {
        const index_t f = indices[r * k + j];
        T acc = 0;
        if (f >= 0 && f < w.rows) {
          const W* src = w.row(f);
          for (index_t i = 0; i < d; ++i) acc += gr[i] * widen<T>(src[i * w.col_stride]);
        }
        out[r * k + j] = acc;
      }
    }
  });
}

template <class T>
void scatter_rows(index_t n, index_t k, const T* values, const index_t* indices, const T* g,
                  index_t d, T* grad, index_t rows, index_t row_stride, index_t col_stride,
                  IndexCheck* check) {
  if (check != nullptr) check->scan(indices, n * k, rows);
  const AxpyFn axpy = active_kernels().axpy_f32;
  // Threads own disjoint column ranges of grad, so no two write the same element.
  parallel_range(d, 64, [&](index_t c0, index_t c1) {
    for (index_t r = 0; r < n && !interrupted(); ++r) {
      const T* gr = g + r * d;
      for (index_t j = 0; j < k; ++j) {
        const index_t f = indices[r * k + j];
        const T v = values[r * k + j];
        if (f < 0 || f >= rows || v == T(0)) continue;
        T* dst = grad + f * row_stride;
        if constexpr (std::is_same<T, float>::value) {
          if (col_stride == 1) {
            axpy(c1 - c0, float(v), reinterpret_cast<const float*>(gr) + c0, reinterpret_cast<float*>(dst) + c0);
            continue;
          }
        }
        for (index_t c = c0; c < c1; ++c) dst[c * col_stride] += v * gr[c];
      }
    }
  });
}

#define SAE_INSTANTIATE_ROWS(T, W)                                                               \
  template void combine_rows<T, W>(index_t, index_t, const T*, const index_t*, const Strided<W>&, \
                                   const T*, T*, IndexCheck*);                                   \
  template void dot_rows<T, W>(index_t, index_t, const T*, const index_t*, const Strided<W>&, T*, \
                               IndexCheck*);
SAE_INSTANTIATE_ROWS(float, float)
SAE_INSTANTIATE_ROWS(float, bf16)
SAE_INSTANTIATE_ROWS(float, f16)
SAE_INSTANTIATE_ROWS(double, double)
#undef SAE_INSTANTIATE_ROWS

template void scatter_rows<float>(index_t, index_t, const float*, const index_t*, const float*,
                                  index_t, float*, index_t, index_t, index_t, IndexCheck*);
template void scatter_rows<double>(index_t, index_t, const double*, const index_t*, const double*,
                                   index_t, double*, index_t, index_t, index_t, IndexCheck*);

}  // namespace sae
