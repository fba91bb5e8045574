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
// The row kernels walk an output row chunk by chunk (Chunk columns at a time, all k rows per
// chunk). prefetch_ahead(j) asks for the data needed kDecodeAhead rows later in that order.
constexpr index_t kDecodeAhead = 16;

template <class W, index_t Chunk>
inline void prefetch_row_chunk(const index_t* indices, index_t j, index_t c, const W* w, index_t rows,
                               index_t ld_row, index_t d) {
  const index_t f = indices[j];
  if (c >= d || f < 0 || f >= rows) return;
  const char* p = reinterpret_cast<const char*>(w + f * ld_row + c);
  constexpr int kLines = int((Chunk * index_t(sizeof(W)) + 63) / 64);
  for (int l = 0; l < kLines; ++l) __builtin_prefetch(p + 64 * l, 0, 3);
}

template <class W, index_t Chunk>
inline void prefetch_ahead(const index_t* indices, index_t k, index_t j, const W* w, index_t rows, index_t ld_row,
                           index_t c0, index_t d) {
  index_t pos = j + kDecodeAhead, c = c0;
  while (pos >= k) {  // past this chunk's rows: the next chunk's (no division in the hot loop)
    pos -= k;
    c += Chunk;
  }
  prefetch_row_chunk<W, Chunk>(indices, pos, c, w, rows, ld_row, d);
}

template <class W, index_t Chunk>
inline void prefetch_start(const index_t* indices, index_t k, const W* w, index_t rows, index_t ld_row, index_t d) {
  for (index_t pos = 0; pos < kDecodeAhead; ++pos)
    prefetch_row_chunk<W, Chunk>(indices, pos % k, (pos / k) * Chunk, w, rows, ld_row, d);
}

template <class W>
void decode_row(index_t k, const float* values, const index_t* indices, const W* w, index_t rows, index_t ld_row,
                index_t d, const float* bias, float* out) {
  for (index_t i = 0; i < d; ++i) out[i] = bias != nullptr ? bias[i] : 0.0f;
  for (index_t j = 0; j < k; ++j) {
    const index_t f = indices[j];
    const float v = values[j];
    if (f < 0 || f >= rows || v == 0.0f) continue;
    const W* src = w + f * ld_row;
    for (index_t i = 0; i < d; ++i) out[i] += v * widen<float>(src[i]);
  }
}

}  // namespace portable
}  // namespace
}  // namespace sae
