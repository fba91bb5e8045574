// The encode micro-kernel interface: one register tile of pre-activations over the whole d_in.
//
// Packed W_enc (csrc/pack.cpp) is a sequence of panels, each [d_in][kPanel] latents. A tile
// computes acc[r * kPanel + l] = sum_i u[r * ldu + i] * panel[i * kPanel + l] for r < rows, so
// every pre-activation is final when the tile returns. Per-ISA variants (generic, AVX2+FMA,
// AVX-512) live in their own source files with their own compile flags and register a table here;
// csrc/isa.cpp picks one at import.
#pragma once

#include "common.h"

namespace sae {

constexpr index_t kPanel = 16;   // latents per packed panel (shared by every ISA variant)
constexpr int kMaxTileRows = 8;  // no variant uses taller tiles; sizes the driver's acc buffer

template <class T, class W>
using TileFn = void (*)(const T* u, index_t ldu, int rows, const W* panel, index_t d_in, T* acc);

struct EncodeKernels {
  const char* isa;   // name reported by build_info()["cpu_isa"]
  int rank;          // higher = faster; the best one the CPU supports is chosen
  bool (*supported)();
  int tile_rows;     // rows per tile call, <= kMaxTileRows
  TileFn<float, float> f32;
  TileFn<float, bf16> bf16w;
  TileFn<float, f16> f16w;
  TileFn<double, double> f64;
};

template <class T, class W> TileFn<T, W> tile_fn(const EncodeKernels& k);
template <> inline TileFn<float, float> tile_fn(const EncodeKernels& k) { return k.f32; }
template <> inline TileFn<float, bf16> tile_fn(const EncodeKernels& k) { return k.bf16w; }
template <> inline TileFn<float, f16> tile_fn(const EncodeKernels& k) { return k.f16w; }
template <> inline TileFn<double, double> tile_fn(const EncodeKernels& k) { return k.f64; }

// Each variant's table (defined in its encode_tile_<isa>.cpp).
extern const EncodeKernels kGenericKernels;

}  // namespace sae
