// Portable tile and screen templates. Each ISA translation unit includes this and instantiates it
// under its own compile flags (the compiler vectorises the lane loops for that ISA); the generic
// variant is nothing else, the others use it for the dtypes they do not hand-tune.
#pragma once

#include "isa_kernels.h"

// Everything here has internal linkage (unnamed namespace): each ISA file gets its own copy,
// compiled with its own flags, and the linker can never swap one for another.
namespace sae {
namespace {
namespace portable {

template <class T, class W, int R>
inline void tile_rows(const T* u, index_t ldu, const W* panel, index_t d_in, T* acc, index_t ld_acc) {
  T a[R][kPanel] = {};
  for (index_t i = 0; i < d_in; ++i) {
    const W* w = panel + i * kPanel;
    T wv[kPanel];
    for (index_t l = 0; l < kPanel; ++l) wv[l] = widen<T>(w[l]);
    for (int r = 0; r < R; ++r) {
      const T ur = u[r * ldu + i];
      for (index_t l = 0; l < kPanel; ++l) a[r][l] += ur * wv[l];
    }
  }
  for (int r = 0; r < R; ++r)
    for (index_t l = 0; l < kPanel; ++l) acc[r * ld_acc + l] = a[r][l];
}

// rows <= 4, any number of panels (one at a time).
template <class T, class W>
void tile(const T* u, index_t ldu, int rows, const W* panel, index_t panel_stride, int panels, index_t d_in,
          T* acc, index_t ld_acc) {
  for (int p = 0; p < panels; ++p) {
    const W* pp = panel + p * panel_stride;
    T* ap = acc + p * kPanel;
    switch (rows) {
      case 1: tile_rows<T, W, 1>(u, ldu, pp, d_in, ap, ld_acc); break;
      case 2: tile_rows<T, W, 2>(u, ldu, pp, d_in, ap, ld_acc); break;
      case 3: tile_rows<T, W, 3>(u, ldu, pp, d_in, ap, ld_acc); break;
      default: tile_rows<T, W, 4>(u, ldu, pp, d_in, ap, ld_acc); break;
    }
  }
}

template <class T> uint64_t screen_topk(T* pre, const T* bias, int lanes, T bar) {
  uint64_t mask = 0;
  for (int l = 0; l < lanes; ++l) {
    pre[l] += bias[l];
    if (!(pre[l] <= bar)) mask |= uint64_t(1) << l;
  }
  return mask;
}

template <class T> uint64_t screen_threshold(T* pre, const T* bias, const T* thr, int lanes) {
  uint64_t mask = 0;
  for (int l = 0; l < lanes; ++l) {
    const T v = pre[l] += bias[l];
    if ((v > thr[l] && v > T(0)) || v != v) mask |= uint64_t(1) << l;
  }
  return mask;
}

// Decode reads k random rows of W_dec per output row, which no hardware prefetcher can predict.
// The row kernels walk an output row chunk by chunk (all k rows per chunk); during the first
// chunk's pass, step j prefetches the whole weight row kDecodeAhead latents later in the flat index
// array, which near the end of a row is the next output row's. Rows are a few KiB and contiguous:
// fetched whole, they make full use of each DRAM page opened.
constexpr index_t kDecodeAhead = 8;

template <class W>
inline void prefetch_row(index_t f, const W* w, index_t rows, index_t ld_row, index_t d) {
  if (f < 0 || f >= rows) return;
  const char* p = reinterpret_cast<const char*>(w + f * ld_row);
  const index_t bytes = d * index_t(sizeof(W));
  for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
}

template <class W>
inline void prefetch_ahead(const index_t* indices, index_t avail, index_t j, const W* w, index_t rows,
                           index_t ld_row, index_t c0, index_t d) {
  if (c0 == 0 && j + kDecodeAhead < avail) prefetch_row(indices[j + kDecodeAhead], w, rows, ld_row, d);
}

template <class W>
void decode_row(index_t k, const float* values, const index_t* indices, index_t /*avail*/, const W* w,
                index_t rows, index_t ld_row, index_t d, const float* bias, float* out) {
  for (index_t i = 0; i < d; ++i) out[i] = bias != nullptr ? bias[i] : 0.0f;
  for (index_t j = 0; j < k; ++j) {
    const index_t f = indices[j];
    const float v = values[j];
    if (f < 0 || f >= rows || v == 0.0f) continue;
    const W* src = w + f * ld_row;
    for (index_t i = 0; i < d; ++i) out[i] += v * widen<float>(src[i]);
  }
}

// 16 partial sums: a reduction the compiler may vectorise without reassociating anything itself.
template <class W>
void dot_row(index_t k, const float* g, const index_t* indices, const W* w, index_t rows, index_t ld_row, index_t d,
             float* out) {
  for (index_t j = 0; j < k; ++j) {
    const index_t f = indices[j];
    if (f < 0 || f >= rows) {
      out[j] = 0.0f;
      continue;
    }
    const W* src = w + f * ld_row;
    float part[16] = {};
    index_t i = 0;
    for (; i + 16 <= d; i += 16)
      for (int l = 0; l < 16; ++l) part[l] += g[i + l] * widen<float>(src[i + l]);
    float acc = 0.0f;
    for (int l = 0; l < 16; ++l) acc += part[l];
    for (; i < d; ++i) acc += g[i] * widen<float>(src[i]);
    out[j] = acc;
  }
}

inline void axpy(index_t d, float a, const float* x, float* y) {
  for (index_t i = 0; i < d; ++i) y[i] += a * x[i];
}

inline double fma_probe(index_t iters, double* flops) {
  float acc[8][kPanel];
  for (int c = 0; c < 8; ++c)
    for (index_t l = 0; l < kPanel; ++l) acc[c][l] = 0.001f * float(c * kPanel + l);
  const float a = 0.999999f, b = 1e-7f;
  for (index_t it = 0; it < iters; ++it)
    for (int c = 0; c < 8; ++c)
      for (index_t l = 0; l < kPanel; ++l) acc[c][l] = acc[c][l] * a + b;
  double sum = 0;
  for (int c = 0; c < 8; ++c)
    for (index_t l = 0; l < kPanel; ++l) sum += acc[c][l];
  *flops = double(iters) * 8 * kPanel * 2;
  return sum;
}

}  // namespace portable
}  // namespace
}  // namespace sae
