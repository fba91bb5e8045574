// The AMX encode tile (Intel Sapphire Rapids and later): TDPBF16PS multiplies a tile of u rows
// (8 x 32 bf16) by a tile of weights (16 pairs of rows x 16 latents, in the VNNI pair layout) into
// 8 x 16 fp32 accumulators, 4096 multiply-adds per instruction, with fp32 accumulation and u
// rounded to bf16 as on the avx512_bf16 variant (the driver hands the rounded u).
//
// One source for two variants: `Tiles` is the instruction set, either the real intrinsics
// (isa_amx.cpp, compiled with -mamx-tile -mamx-bf16) or a scalar emulation of the same
// instructions (isa_amx_emulated.cpp), which lets every machine run this code's layout, tail and
// caching logic through the whole test matrix. Only the five instructions differ.
//
// The packed panels are the shared [d_in][16] layout (pack.h). A weight tile wants rows i and i+1
// interleaved, so each thread re-lays a group of panels out once (VPERMW, as the avx512_bf16
// variant does in registers) and keeps it while the driver runs the group over its rows (16-32
// calls of 8 rows); `begin()` drops it when a task starts, since the next packed W_enc may sit at
// the same address.
#pragma once

#include <immintrin.h>

#include <cstring>
#include <vector>

#include "bf16_pairs.h"
#include "isa_kernels.h"

namespace sae {
namespace amx {

constexpr int kRows = 8;           // u rows per call (the driver's tile rows)
constexpr int kPanels = 4;         // panels per call: accumulator tiles 0-3
constexpr int kK = 32;             // bf16 elements of d_in per tile step (64 bytes)
constexpr int kA = 4, kB0 = 5, kB1 = 6;   // tile registers: u rows, weights (two, alternating)

// The tile configuration (palette 1): 64 bytes, as LDTILECFG reads them.
struct alignas(64) Config {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline Config make_config() {
  Config c;
  for (int t = 0; t < kPanels; ++t) c.rows[t] = kRows, c.colsb[t] = 64;   // 8 x 16 fp32
  c.rows[kA] = kRows, c.colsb[kA] = 64;                                   // 8 x 32 bf16
  c.rows[kB0] = c.rows[kB1] = 16, c.colsb[kB0] = c.colsb[kB1] = 64;       // 16 x 32 bf16 pairs
  return c;
}

// The thread's weight tiles of one panel group: [panel][k step][16 pair rows][32 bf16], zero past
// d_in, for the panels at `panel` (until begin() or another group).
struct PanelCache {
  const bf16* panel = nullptr;
  index_t ps = 0, d_in = 0;
  int panels = 0;
  std::vector<bf16> tiles;
};

inline PanelCache& cache() {
  thread_local PanelCache c;
  return c;
}

inline void begin() { cache().panel = nullptr; }

inline index_t k_steps(index_t d_in) { return (d_in + kK - 1) / kK; }

inline const bf16* weight_tiles(const bf16* panel, index_t ps, int panels, index_t d_in) {
  PanelCache& c = cache();
  if (c.panel == panel && c.ps == ps && c.panels == panels && c.d_in == d_in) return c.tiles.data();
  const index_t steps = k_steps(d_in);
  c.tiles.resize(size_t(panels * steps * kK * kPanel));
  const __m512i idx = bf16_pair_index();
  for (int p = 0; p < panels; ++p) {
    const bf16* src = panel + p * ps;
    bf16* dst = c.tiles.data() + p * steps * kK * kPanel;
    for (index_t i = 0; i < steps * kK; i += 2) {   // one pair row: rows i and i + 1 interleaved
      const __mmask32 live = i + 1 < d_in ? __mmask32(0xFFFFFFFFu) : i < d_in ? __mmask32(0xFFFFu) : 0;
      const __m512i rows = _mm512_maskz_loadu_epi16(live, src + i * kPanel);
      _mm512_storeu_si512(dst + i * kPanel, _mm512_permutexvar_epi16(idx, rows));
    }
  }
  c.panel = panel, c.ps = ps, c.panels = panels, c.d_in = d_in;
  return c.tiles.data();
}

// Tiles: load_config(const Config*), zero(t), load(t, p, stride), dot(c, b) (c += tile kA x b),
// store(t, p, stride), with t, c, b tile numbers (constants once inlined: the instructions take
// them as immediates, so the real Tiles switches over literal ones).
template <class Tiles>
void tile(const bf16* u, index_t ldu, int rows, const bf16* panel, index_t ps, int panels, index_t d_in, float* acc,
          index_t ld_acc) {
  static const Config config = make_config();
  Tiles::load_config(&config);      // (every call: other code on this thread, oneDNN, has its own)
  const bf16* w = weight_tiles(panel, ps, panels, d_in);
  const index_t steps = k_steps(d_in);
  for (int p = 0; p < panels; ++p) Tiles::zero(p);
  alignas(64) bf16 staged[kRows * kK];
  for (index_t s = 0; s < steps; ++s) {
    const index_t k0 = s * kK;
    // u's rows are ldu long (d_in rounded up to even): a step past them, or a call of fewer than
    // 8 rows, reads a zero-padded copy instead of memory it does not own.
    if (rows == kRows && k0 + kK <= ldu) {
      Tiles::load(kA, u + k0, ldu * index_t(sizeof(bf16)));
    } else {
      std::memset(staged, 0, sizeof staged);
      const index_t width = std::min<index_t>(kK, d_in - k0);
      for (int r = 0; r < rows; ++r) std::memcpy(staged + r * kK, u + r * ldu + k0, size_t(width) * sizeof(bf16));
      Tiles::load(kA, staged, kK * index_t(sizeof(bf16)));
    }
    for (int p = 0; p < panels; ++p) {
      const int b = p % 2 == 0 ? kB0 : kB1;     // (alternating: a load overlaps the last product)
      Tiles::load(b, w + (p * steps + s) * kK * kPanel, 64);
      Tiles::dot(p, b);
    }
  }
  for (int p = 0; p < panels; ++p) Tiles::store(p, acc + p * kPanel, ld_acc * index_t(sizeof(float)));
}

// The amx variants' table: the AVX-512 variant's kernels, with this bf16-weight tile.
template <class Tiles> IsaKernels table(const char* name, int rank, bool (*supported)()) {
  // (from the AVX-512 table, constant-initialised, so complete before this copy runs; the
  // avx512_bf16 table is built at start-up like this one, in an order C++ leaves open)
  IsaKernels k = *kAvx512Kernels;
  k.isa = name;
  k.rank = rank;
  k.supported = supported;
  k.bf16w = {k.bf16w.fn, kRows, kPanels, tile<Tiles>, begin};
  k.bf16_dot_probe = avx512_bf16_dot_probe;
  return k;
}

}  // namespace amx
}  // namespace sae
