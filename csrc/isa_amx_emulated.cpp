// The amx variant's code (amx_tile.h) on a scalar emulation of the five tile instructions it
// uses, so that the layout, tail and caching logic run through the whole test matrix on any
// AVX-512 BF16 machine (AMD Zen 4/5 included). Slow; never chosen by `auto` (lowest rank), and
// SAE_NATIVE_ISA=amx_emulated chooses it. Compiled with the avx512_bf16 variant's flags.
//
// The emulation follows Intel's pseudo-code for TDPBF16PS: per output element, for each pair of
// the row, the even then the odd product added to the fp32 accumulator in turn; bf16 inputs that
// are denormal read as zero, and denormal results are flushed to zero (DAZ / FTZ, whatever MXCSR
// says).
#include <cmath>

#include "amx_tile.h"

namespace sae {
namespace {

struct TileState {
  uint8_t rows[8] = {};
  uint16_t colsb[8] = {};
  alignas(64) uint8_t data[8][16][64] = {};
};

TileState& state() {
  thread_local TileState s;
  return s;
}

float bf16_daz(uint16_t b) {
  return (b & 0x7F80u) == 0 ? std::copysign(0.0f, widen_bf16(b)) : widen_bf16(b);
}

float ftz(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }

struct EmulatedTiles {
  static void load_config(const amx::Config* c) {
    TileState& s = state();
    for (int t = 0; t < 8; ++t) s.rows[t] = c->rows[t], s.colsb[t] = c->colsb[t];
  }
  static void zero(int t) { std::memset(state().data[t], 0, sizeof state().data[t]); }
  static void load(int t, const void* p, index_t stride) {
    TileState& s = state();
    std::memset(s.data[t], 0, sizeof s.data[t]);
    for (int r = 0; r < s.rows[t]; ++r)
      std::memcpy(s.data[t][r], static_cast<const uint8_t*>(p) + r * stride, s.colsb[t]);
  }
  static void store(int t, void* p, index_t stride) {
    TileState& s = state();
    for (int r = 0; r < s.rows[t]; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, s.data[t][r], s.colsb[t]);
  }
  static void dot(int c, int b) {
    TileState& s = state();
    const int a = amx::kA;
    const int m_rows = s.rows[c], n_cols = s.colsb[c] / 4, k_pairs = s.colsb[a] / 4;
    for (int m = 0; m < m_rows; ++m)
      for (int n = 0; n < n_cols; ++n) {
        float acc;
        std::memcpy(&acc, s.data[c][m] + 4 * n, 4);
        for (int k = 0; k < k_pairs; ++k) {
          uint16_t a2[2], b2[2];
          std::memcpy(a2, s.data[a][m] + 4 * k, 4);
          std::memcpy(b2, s.data[b][k] + 4 * n, 4);
          acc = ftz(acc + bf16_daz(a2[0]) * bf16_daz(b2[0]));
          acc = ftz(acc + bf16_daz(a2[1]) * bf16_daz(b2[1]));
        }
        std::memcpy(s.data[c][m] + 4 * n, &acc, 4);
      }
  }
};

bool supported() { return kAvx512Bf16Kernels != nullptr && kAvx512Bf16Kernels->supported(); }

const IsaKernels kTable = amx::table<EmulatedTiles>("amx_emulated", 1, supported);

}  // namespace

const IsaKernels* const kAmxEmulatedKernels = &kTable;

}  // namespace sae
