// The per-ISA kernel interface: the encode micro-kernel (register tiles of pre-activations over
// the whole d_in), the SIMD screen that turns a tile row into the few lanes worth keeping, and the
// decode row kernel (gather-FMA over the active rows of W_dec).
//
// Packed W_enc (csrc/pack.h) is a sequence of panels, each [d_in][kPanel] latents. A tile computes
//   acc[r * ld_acc + p * kPanel + l] = sum_i u[r * ldu + i] * panel_p[i * kPanel + l]
// for r < rows, p < panels (panel_p = panel + p * panel_stride), so every pre-activation is final
// when the tile returns. A screen then adds the bias in place and returns a bit mask of the lanes
// that pass: for top-k, !(pre <= bar) (NaN passes: it ranks highest); for threshold SAEs,
// (pre > thr && pre > 0) || isnan(pre).
//
// Per-ISA variants (generic, AVX2+FMA, AVX-512, AVX-512 with BF16 dot products) live in
// isa_<name>.cpp, each compiled with its own flags; csrc/isa.cpp picks one at import.
#pragma once

#include <cstdint>

#include "common.h"

namespace sae {

constexpr index_t kPanel = 16;     // latents per packed panel (shared by every ISA variant)
constexpr int kMaxTileRows = 8;    // the driver's acc buffer holds kMaxTileRows x kMaxTileLanes
constexpr int kMaxTilePanels = 4;
constexpr int kMaxTileLanes = kMaxTilePanels * int(kPanel);  // <= 64: a screen's mask is a uint64

template <class T, class W>
using TileFn = void (*)(const T* u, index_t ldu, int rows, const W* panel, index_t panel_stride, int panels,
                        index_t d_in, T* acc, index_t ld_acc);

// A tile on 16-bit dot-product units (VDPBF16PS): u arrives rounded to bf16 (round to nearest
// even), each row zero-padded to an even length ldu, so u[2j], u[2j+1] form one 32-bit pair.
template <class T, class W>
using PairTileFn = void (*)(const bf16* u, index_t ldu, int rows, const W* panel, index_t panel_stride, int panels,
                            index_t d_in, T* acc, index_t ld_acc);

template <class T, class W> struct Tile {
  TileFn<T, W> fn;
  int rows;    // rows per call, <= kMaxTileRows
  int panels;  // panels per call, <= kMaxTilePanels
  // Set where the variant multiplies on bf16 units: the driver rounds u to bf16 and calls this
  // instead of fn (fp32 accumulation; docs/design.md states the rounding).
  PairTileFn<T, W> bf16_fn = nullptr;
  // Called by a thread before a task's run of bf16_fn calls over one packed W_enc: a variant that
  // keeps anything derived from the panels between calls drops it here (amx_tile.h).
  void (*bf16_begin)() = nullptr;
};

template <class T> struct Screen {
  // pre[l] += bias[l] for l < lanes; returns the lanes with !(pre <= bar).
  uint64_t (*topk)(T* pre, const T* bias, int lanes, T bar);
  // pre[l] += bias[l]; returns the lanes with (pre > thr[l] && pre > 0) || isnan(pre).
  uint64_t (*threshold)(T* pre, const T* bias, const T* thr, int lanes);
};

// out[0:d] = bias (or 0) + sum_j values[j] * w[indices[j] * ld_row + 0:d], for one output row,
// skipping latents outside [0, rows) and zero values. W rows are contiguous (the caller falls back
// to the strided loop otherwise). indices[k:avail] are the following rows' latents, readable for
// prefetching across the row boundary (avail >= k).
template <class W>
using DecodeRowFn = void (*)(index_t k, const float* values, const index_t* indices, index_t avail, const W* w,
                             index_t rows, index_t ld_row, index_t d, const float* bias, float* out);

// out[j] = <g, w[indices[j] * ld_row + 0:d]> for one row's k codes (0 for latents outside
// [0, rows)): decode's value gradient. Rows of W contiguous.
template <class W>
using DotRowFn = void (*)(index_t k, const float* g, const index_t* indices, const W* w, index_t rows, index_t ld_row,
                          index_t d, float* out);

// y[0:d] += a * x[0:d]: the inner loop of the sparse weight gradients.
using AxpyFn = void (*)(index_t d, float a, const float* x, float* y);

// The machine's FMA ceiling for this ISA: `iters` steps of independent fused multiply-add chains
// that fill the register file. Returns a checksum (so nothing is optimised away) and sets *flops.
using FmaProbeFn = double (*)(index_t iters, double* flops);

struct IsaKernels {
  const char* isa;   // name reported by build_info()["cpu_isa"]
  int rank;          // higher = faster; the best one the CPU supports is chosen
  bool (*supported)();
  Tile<float, float> f32;
  Tile<float, bf16> bf16w;
  Tile<float, f16> f16w;
  Tile<double, double> f64;
  Screen<float> screen_f32;
  Screen<double> screen_f64;
  DecodeRowFn<float> decode_f32;
  DecodeRowFn<bf16> decode_bf16w;
  DecodeRowFn<f16> decode_f16w;
  FmaProbeFn fma_probe;
  DotRowFn<float> dot_f32;
  DotRowFn<bf16> dot_bf16w;
  DotRowFn<f16> dot_f16w;
  AxpyFn axpy_f32;
  FmaProbeFn bf16_dot_probe = nullptr;   // the bf16 dot-product ceiling, where the variant has one
};

template <class T, class W> const Tile<T, W>& tile_of(const IsaKernels& k);
template <> inline const Tile<float, float>& tile_of(const IsaKernels& k) { return k.f32; }
template <> inline const Tile<float, bf16>& tile_of(const IsaKernels& k) { return k.bf16w; }
template <> inline const Tile<float, f16>& tile_of(const IsaKernels& k) { return k.f16w; }
template <> inline const Tile<double, double>& tile_of(const IsaKernels& k) { return k.f64; }

template <class T> const Screen<T>& screen_of(const IsaKernels& k);
template <> inline const Screen<float>& screen_of(const IsaKernels& k) { return k.screen_f32; }
template <> inline const Screen<double>& screen_of(const IsaKernels& k) { return k.screen_f64; }

template <class W> DecodeRowFn<W> decode_row_of(const IsaKernels& k);
template <> inline DecodeRowFn<float> decode_row_of(const IsaKernels& k) { return k.decode_f32; }
template <> inline DecodeRowFn<bf16> decode_row_of(const IsaKernels& k) { return k.decode_bf16w; }
template <> inline DecodeRowFn<f16> decode_row_of(const IsaKernels& k) { return k.decode_f16w; }

template <class W> DotRowFn<W> dot_row_of(const IsaKernels& k);
template <> inline DotRowFn<float> dot_row_of(const IsaKernels& k) { return k.dot_f32; }
template <> inline DotRowFn<bf16> dot_row_of(const IsaKernels& k) { return k.dot_bf16w; }
template <> inline DotRowFn<f16> dot_row_of(const IsaKernels& k) { return k.dot_f16w; }

// Each variant's table, defined in its isa_<name>.cpp (null where not compiled in).
extern const IsaKernels kGenericKernels;
extern const IsaKernels* const kAvx2Kernels;
extern const IsaKernels* const kAvx512Kernels;
extern const IsaKernels* const kAvx512Bf16Kernels;
extern const IsaKernels* const kAmxKernels;           // off unless chosen: see isa_amx.cpp
extern const IsaKernels* const kAmxEmulatedKernels;   // the same code on emulated tiles, for tests

// VDPBF16PS's ceiling (isa_avx512_bf16.cpp), which the amx variants report too.
double avx512_bf16_dot_probe(index_t iters, double* flops);

}  // namespace sae
