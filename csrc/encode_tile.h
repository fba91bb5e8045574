// The encode micro-kernel interface: register tiles of pre-activations over the whole d_in, and
// the SIMD screen that turns a tile row into the few lanes worth keeping.
//
// Packed W_enc (csrc/pack.h) is a sequence of panels, each [d_in][kPanel] latents. A tile computes
//   acc[r * ld_acc + p * kPanel + l] = sum_i u[r * ldu + i] * panel_p[i * kPanel + l]
// for r < rows, p < panels (panel_p = panel + p * panel_stride), so every pre-activation is final
// when the tile returns. A screen then adds the bias in place and returns a bit mask of the lanes
// that pass: for top-k, !(pre <= bar) (NaN passes: it ranks highest); for threshold SAEs,
// (pre > thr && pre > 0) || isnan(pre).
//
// Per-ISA variants (generic, AVX2+FMA, AVX-512) live in encode_tile_<isa>.cpp, each compiled
// with its own flags; csrc/isa.cpp picks one at import.
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

template <class T, class W> struct Tile {
  TileFn<T, W> fn;
  int rows;    // rows per call, <= kMaxTileRows
  int panels;  // panels per call, <= kMaxTilePanels
};

template <class T> struct Screen {
  // pre[l] += bias[l] for l < lanes; returns the lanes with !(pre <= bar).
  uint64_t (*topk)(T* pre, const T* bias, int lanes, T bar);
  // pre[l] += bias[l]; returns the lanes with (pre > thr[l] && pre > 0) || isnan(pre).
  uint64_t (*threshold)(T* pre, const T* bias, const T* thr, int lanes);
};

struct EncodeKernels {
  const char* isa;   // name reported by build_info()["cpu_isa"]
  int rank;          // higher = faster; the best one the CPU supports is chosen
  bool (*supported)();
  Tile<float, float> f32;
  Tile<float, bf16> bf16w;
  Tile<float, f16> f16w;
  Tile<double, double> f64;
  Screen<float> screen_f32;
  Screen<double> screen_f64;
};

template <class T, class W> const Tile<T, W>& tile_of(const EncodeKernels& k);
template <> inline const Tile<float, float>& tile_of(const EncodeKernels& k) { return k.f32; }
template <> inline const Tile<float, bf16>& tile_of(const EncodeKernels& k) { return k.bf16w; }
template <> inline const Tile<float, f16>& tile_of(const EncodeKernels& k) { return k.f16w; }
template <> inline const Tile<double, double>& tile_of(const EncodeKernels& k) { return k.f64; }

template <class T> const Screen<T>& screen_of(const EncodeKernels& k);
template <> inline const Screen<float>& screen_of(const EncodeKernels& k) { return k.screen_f32; }
template <> inline const Screen<double>& screen_of(const EncodeKernels& k) { return k.screen_f64; }

// Each variant's table, defined in its encode_tile_<isa>.cpp (null where not compiled in).
extern const EncodeKernels kGenericKernels;
extern const EncodeKernels* const kAvx2Kernels;
extern const EncodeKernels* const kAvx512Kernels;

}  // namespace sae
