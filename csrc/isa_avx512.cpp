// AVX-512 encode tiles: up to 8 rows x 2 panels (32 latents) of fp32 accumulators, 16 of the 32
// zmm registers; per step of d_in, 2 weight loads + 8 broadcasts feed 16 FMAs, so the FMA ports
// and not the loads set the pace. Weights fp32, or bf16 / fp16 widened in registers.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include "isa_kernels_portable.h"

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
// The first lanes of `m` only; the others read as 0 and never touch memory.
inline __m512 masked_load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 masked_load16(const bf16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 masked_load16(const f16* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

template <class W, int R, int P>
void tile_rp(const float* u, index_t ldu, const W* panel, index_t ps, index_t d_in, float* acc, index_t ld_acc) {
  __m512 c[R][P];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) c[r][p] = _mm512_setzero_ps();
  for (index_t i = 0; i < d_in; ++i) {
    __m512 b[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) b[p] = load16(panel + p * ps + i * kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(u[r * ldu + i]);
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) c[r][p] = _mm512_fmadd_ps(a, b[p], c[r][p]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
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

// Up to 4 rows: 4 panels at once (16 accumulators, 4 weight loads + 4 broadcasts per step) --
// the shape of token-by-token generation, where more independent FMA chains hide their latency.
// More rows: 2 panels at once (8 x 2 accumulators).
template <class W>
void tile(const float* u, index_t ldu, int rows, const W* panel, index_t ps, int panels, index_t d_in, float* acc,
          index_t ld_acc) {
  int p = 0;
  if (rows <= 4) {
    for (; p + 4 <= panels; p += 4) {
      switch (rows) {
        case 1: tile_rp<W, 1, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
        case 2: tile_rp<W, 2, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
        case 3: tile_rp<W, 3, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
        default: tile_rp<W, 4, 4>(u, ldu, panel + p * ps, ps, d_in, acc + p * kPanel, ld_acc); break;
      }
    }
  }
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

// Decode: a chunk of up to 16 zmm (256 floats) of the output row stays in registers while the k
// weight rows stream past, each prefetched kDecodeAhead rows early (portable::prefetch_ahead).
constexpr index_t kDecodeChunk = 256;

template <class W, int NV>
void decode_chunk(index_t k, const float* values, const index_t* indices, index_t avail, const W* w, index_t rows,
                  index_t ld_row,
                  index_t c0, index_t d, int tail, const float* bias, float* out) {
  // Vectors 0..NV-2 are full; the last one has `tail` (1..16) live lanes.
  const __mmask16 last = first_lanes(tail);
  __m512 acc[NV];
#pragma GCC unroll 16
  for (int c = 0; c < NV; ++c) {
    const __mmask16 m = c == NV - 1 ? last : __mmask16(0xFFFF);
    acc[c] = bias != nullptr ? _mm512_maskz_loadu_ps(m, bias + c0 + 16 * c) : _mm512_setzero_ps();
  }
  for (index_t j = 0; j < k; ++j) {
    portable::prefetch_ahead(indices, avail, j, w, rows, ld_row, c0, d);
    const index_t f = indices[j];
    const float v = values[j];
    if (f < 0 || f >= rows || v == 0.0f) continue;
    const W* src = w + f * ld_row + c0;
    const __m512 vv = _mm512_set1_ps(v);
#pragma GCC unroll 16
    for (int c = 0; c < NV - 1; ++c) acc[c] = _mm512_fmadd_ps(vv, load16(src + 16 * c), acc[c]);
    acc[NV - 1] = _mm512_fmadd_ps(vv, masked_load16(src + 16 * (NV - 1), last), acc[NV - 1]);
  }
#pragma GCC unroll 16
  for (int c = 0; c < NV - 1; ++c) _mm512_storeu_ps(out + c0 + 16 * c, acc[c]);
  _mm512_mask_storeu_ps(out + c0 + 16 * (NV - 1), last, acc[NV - 1]);
}

template <class W>
void decode_row(index_t k, const float* values, const index_t* indices, index_t avail, const W* w, index_t rows,
                index_t ld_row, index_t d, const float* bias, float* out) {
  for (index_t c0 = 0; c0 < d; c0 += kDecodeChunk) {
    const index_t len = d - c0 < kDecodeChunk ? d - c0 : kDecodeChunk;
    const int nv = int((len + 15) / 16), tail = int(len - 16 * (nv - 1));
    switch (nv) {
      case 1: decode_chunk<W, 1>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 2: decode_chunk<W, 2>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 3: decode_chunk<W, 3>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 4: decode_chunk<W, 4>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 5: decode_chunk<W, 5>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 6: decode_chunk<W, 6>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 7: decode_chunk<W, 7>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 8: decode_chunk<W, 8>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 9: decode_chunk<W, 9>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 10: decode_chunk<W, 10>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 11: decode_chunk<W, 11>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 12: decode_chunk<W, 12>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 13: decode_chunk<W, 13>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 14: decode_chunk<W, 14>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      case 15: decode_chunk<W, 15>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
      default: decode_chunk<W, 16>(k, values, indices, avail, w, rows, ld_row, c0, d, tail, bias, out); break;
    }
  }
}

// 24 independent FMA chains: enough to cover 4-cycle latency on two FMA pipes.
double fma_probe(index_t iters, double* flops) {
  __m512 acc[24];
  for (int c = 0; c < 24; ++c) acc[c] = _mm512_set1_ps(0.001f * float(c));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (index_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
    for (int c = 0; c < 24; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  __m512 sum = acc[0];
  for (int c = 1; c < 24; ++c) sum = _mm512_add_ps(sum, acc[c]);
  *flops = double(iters) * 24 * 16 * 2;
  return double(_mm512_reduce_add_ps(sum));
}

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

const IsaKernels kTable = {
    "avx512", 20, supported,
    {tile<float>, 8, 4},
    {tile<bf16>, 8, 4},
    {tile<f16>, 8, 4},
    {portable::tile<double, double>, 4, 1},
    {screen_topk, screen_threshold},
    {portable::screen_topk<double>, portable::screen_threshold<double>},
    decode_row<float>, decode_row<bf16>, decode_row<f16>,
    fma_probe,
    portable::dot_row<float>, portable::dot_row<bf16>, portable::dot_row<f16>, portable::axpy,
};

}  // namespace

const IsaKernels* const kAvx512Kernels = &kTable;

}  // namespace sae
