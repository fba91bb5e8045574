// AVX-512 encode tiles: up to 8 rows x 2 panels (32 latents) of fp32 accumulators, 16 of the 32
// zmm registers; per step of d_in, 2 weight loads + 8 broadcasts feed 16 FMAs, so the FMA ports
// and not the loads set the pace. Weights fp32, or bf16 / fp16 widened in registers.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include "encode_tile_portable.h"

namespace sae {
namespace {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const f16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <class W, int R, int P>
void tile_rp(const float* u, index_t ldu, const W* panel, index_t ps, index_t d_in, float* acc, index_t ld_acc) {
  __m512 c[R][P];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) c[r][p] = _mm512_setzero_ps();
  for (index_t i = 0; i < d_in; ++i) {
    __m512 b[P];
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) b[p] = load16(panel + p * ps + i * kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(u[r * ldu + i]);
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) c[r][p] = _mm512_fmadd_ps(a, b[p], c[r][p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(acc + r * ld_acc + p * kPanel, c[r][p]);
}

template <class W, int P>
void tile_p(const float* u, index_t ldu, int rows, const W* panel, index_t ps, index_t d_in, float* acc,
            index_t ld_acc) {
  switch (rows) {
    case 1: return tile_rp<W, 1, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 2: return tile_rp<W, 2, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 3: return tile_rp<W, 3, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 4: return tile_rp<W, 4, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 5: return tile_rp<W, 5, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 6: return tile_rp<W, 6, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    case 7: return tile_rp<W, 7, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
    default: return tile_rp<W, 8, P>(u, ldu, panel, ps, d_in, acc, ld_acc);
  }
}

template <class W>
void tile(const float* u, index_t ldu, int rows, const W* panel, index_t ps, int panels, index_t d_in, float* acc,
          index_t ld_acc) {
  int p = 0;
  for (; p + 2 <= panels; p += 2) tile_p<W, 2>(u, ldu, rows, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc);
  if (p < panels) tile_p<W, 1>(u, ldu, rows, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc);
}

inline __mmask16 first_lanes(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

uint64_t screen_topk(float* pre, const float* bias, int lanes, float bar) {
  const __m512 vbar = _mm512_set1_ps(bar);
  uint64_t mask = 0;
  for (int l = 0; l < lanes; l += 16) {
    const __mmask16 valid = first_lanes(lanes - l);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, pre + l), _mm512_maskz_loadu_ps(valid, bias + l));
    _mm512_mask_storeu_ps(pre + l, valid, v);
    mask |= uint64_t(_mm512_mask_cmp_ps_mask(valid, v, vbar, _CMP_NLE_UQ)) << l;
  }
  return mask;
}

uint64_t screen_threshold(float* pre, const float* bias, const float* thr, int lanes) {
  const __m512 zero = _mm512_setzero_ps();
  uint64_t mask = 0;
  for (int l = 0; l < lanes; l += 16) {
    const __mmask16 valid = first_lanes(lanes - l);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, pre + l), _mm512_maskz_loadu_ps(valid, bias + l));
    _mm512_mask_storeu_ps(pre + l, valid, v);
    const __mmask16 above = _mm512_mask_cmp_ps_mask(valid, v, _mm512_maskz_loadu_ps(valid, thr + l), _CMP_GT_OQ) &
                            _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GT_OQ);
    const __mmask16 nan = _mm512_mask_cmp_ps_mask(valid, v, v, _CMP_UNORD_Q);
    mask |= uint64_t(above | nan) << l;
  }
  return mask;
}

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

const EncodeKernels kTable = {
    "avx512", 20, supported,
    {tile<float>, 8, 2},
    {tile<bf16>, 8, 2},
    {tile<f16>, 8, 2},
    {portable::tile<double, double>, 4, 1},
    {screen_topk, screen_threshold},
    {portable::screen_topk<double>, portable::screen_threshold<double>},
};

}  // namespace

const EncodeKernels* const kAvx512Kernels = &kTable;

}  // namespace sae
