// AVX-512 with BF16 dot products (AMD Zen 4 / 5, Intel Cooper Lake and later): bf16 weights meet
// u rounded to bf16 in VDPBF16PS, which multiplies two pairs of bf16 per fp32 lane and adds both
// products to the fp32 accumulator: twice the multiply-adds of an fp32 FMA per instruction. Every
// other kernel is the AVX-512 variant's. Compiled with -mavx512f -mavx512bw -mavx512vl
// -mavx512dq -mavx512bf16 -mfma -mf16c (CMakeLists.txt).
//
// The packed panels are the shared [d_in][16] layout (pack.h), so one packing serves every
// variant: rows i and i+1 of a panel are 64 contiguous bytes, and one VPERMW interleaves them
// into the (w[i][l], w[i+1][l]) pairs the instruction wants. A bf16 x bf16 product is exact in
// fp32; VDPBF16PS treats denormal inputs as zero and flushes denormal results.
#include <immintrin.h>

#include <cstring>

#include "bf16_pairs.h"
#include "isa_kernels.h"

namespace sae {
namespace {

inline __m512i broadcast_pair(const bf16* u) {
  int32_t pair;
  std::memcpy(&pair, u, sizeof pair);
  return _mm512_set1_epi32(pair);
}

template <int R, int P>
void tile_rp(const bf16* u, index_t ldu, const bf16* panel, index_t ps, index_t d_in, float* acc, index_t ld_acc) {
  const __m512i idx = bf16_pair_index();
  __m512 c[R][P];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) c[r][p] = _mm512_setzero_ps();
  const index_t even = d_in & ~index_t(1);
  for (index_t i = 0; i < d_in; i += 2) {
    __m512i b[P];
    // The last odd row has no partner: load its 16 weights only (the pair's other half is 0,
    // and u's padding is 0 too).
    const __mmask32 live = i < even ? __mmask32(0xFFFFFFFFu) : __mmask32(0xFFFFu);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p)
      b[p] = _mm512_permutexvar_epi16(idx, _mm512_maskz_loadu_epi16(live, panel + p * ps + i * kPanel));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)broadcast_pair(u + r * ldu + i);
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) c[r][p] = _mm512_dpbf16_ps(c[r][p], a, (__m512bh)b[p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(acc + r * ld_acc + p * kPanel, c[r][p]);
}

template <int P>
void tile_p(const bf16* u, index_t ldu, int rows, const bf16* panel, index_t ps, index_t d_in, float* acc,
            index_t ld_acc) {
  switch (rows) {
    case 1: return tile_rp<1, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 2: return tile_rp<2, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 3: return tile_rp<3, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 4: return tile_rp<4, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 5: return tile_rp<5, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 6: return tile_rp<6, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 7: return tile_rp<7, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    default: return tile_rp<8, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
  }
}

// The AVX-512 variant's shapes: up to 4 rows 4 panels at once (generation), else 8 rows x 2.
void tile(const bf16* u, index_t ldu, int rows, const bf16* panel, index_t ps, int panels, index_t d_in, float* acc,
          index_t ld_acc) {
  int p = 0;
  if (rows <= 4) {
    for (; p + 4 <= panels; p += 4) {
      switch (rows) {
        case 1: tile_rp<1, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
        case 2: tile_rp<2, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
        case 3: tile_rp<3, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
        default: tile_rp<4, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
      }
    }
  }
  for (; p + 2 <= panels; p += 2) tile_p<2>(u, ldu, rows, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc);
  if (p < panels) tile_p<1>(u, ldu, rows, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc);
}

}  // namespace

// 24 independent VDPBF16PS chains; each instruction is 32 multiply-adds (64 flops).
double avx512_bf16_dot_probe(index_t iters, double* flops) {
  __m512 acc[24];
  for (int c = 0; c < 24; ++c) acc[c] = _mm512_set1_ps(0.001f * float(c));
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80);   // (1, 1)
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x33803380);   // (2^-24, 2^-24)
  for (index_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
    for (int c = 0; c < 24; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  __m512 sum = acc[0];
  for (int c = 1; c < 24; ++c) sum = _mm512_add_ps(sum, acc[c]);
  *flops = double(iters) * 24 * 32 * 2;
  return double(_mm512_reduce_add_ps(sum));
}

namespace {

bool supported() {
  __builtin_cpu_init();
  return kAvx512Kernels != nullptr && kAvx512Kernels->supported() && __builtin_cpu_supports("avx512bf16");
}

// The AVX-512 table (constant-initialised in isa_avx512.cpp, so complete before this copy runs)
// with the bf16-weight tile on the dot-product units.
IsaKernels make_table() {
  IsaKernels k = *kAvx512Kernels;
  k.isa = "avx512_bf16";
  k.rank = 30;
  k.supported = supported;
  k.bf16w.bf16_fn = tile;
  k.bf16_dot_probe = avx512_bf16_dot_probe;
  return k;
}

const IsaKernels kTable = make_table();

}  // namespace

const IsaKernels* const kAvx512Bf16Kernels = &kTable;

}  // namespace sae
