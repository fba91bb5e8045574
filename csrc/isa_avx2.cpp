// AVX2+FMA encode tiles: up to 6 rows x 1 panel (16 latents = 2 ymm) of fp32 accumulators, 12 of
// the 16 ymm registers; per step of d_in, 2 weight loads + 6 broadcasts feed 12 FMAs. Weights
// fp32, or bf16 / fp16 widened in registers. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
#include <immintrin.h>

#include "isa_kernels_portable.h"

namespace sae {
namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

template <class W, int R>
void tile_r(const float* u, index_t ldu, const W* panel, index_t d_in, float* acc, index_t ld_acc) {
  __m256 c0[R], c1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (index_t i = 0; i < d_in; ++i) {
    const __m256 b0 = load8(panel + i * kPanel), b1 = load8(panel + i * kPanel + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(u + r * ldu + i);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(acc + r * ld_acc, c0[r]);
    _mm256_storeu_ps(acc + r * ld_acc + 8, c1[r]);
  }
}

template <class W>
void tile(const float* u, index_t ldu, int rows, const W* panel, index_t ps, int panels, index_t d_in, float* acc,
          index_t ld_acc) {
  for (int p = 0; p < panels; ++p) {
    const W* pp = panel + p * ps;
    float* ap = acc + p * kPanel;
    switch (rows) {
      case 1: tile_r<W, 1>(u, ldu, pp, d_in, ap, ld_acc); break;
      case 2: tile_r<W, 2>(u, ldu, pp, d_in, ap, ld_acc); break;
      case 3: tile_r<W, 3>(u, ldu, pp, d_in, ap, ld_acc); break;
      case 4: tile_r<W, 4>(u, ldu, pp, d_in, ap, ld_acc); break;
      case 5: tile_r<W, 5>(u, ldu, pp, d_in, ap, ld_acc); break;
      default: tile_r<W, 6>(u, ldu, pp, d_in, ap, ld_acc); break;
    }
  }
}

uint64_t screen_topk(float* pre, const float* bias, int lanes, float bar) {
  const __m256 vbar = _mm256_set1_ps(bar);
  uint64_t mask = 0;
  int l = 0;
  for (; l + 8 <= lanes; l += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(pre + l), _mm256_loadu_ps(bias + l));
    _mm256_storeu_ps(pre + l, v);
    mask |= uint64_t(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, vbar, _CMP_NLE_UQ)))) << l;
  }
  return mask | (l < lanes ? portable::screen_topk<float>(pre + l, bias + l, lanes - l, bar) << l : 0);
}

uint64_t screen_threshold(float* pre, const float* bias, const float* thr, int lanes) {
  const __m256 zero = _mm256_setzero_ps();
  uint64_t mask = 0;
  int l = 0;
  for (; l + 8 <= lanes; l += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(pre + l), _mm256_loadu_ps(bias + l));
    _mm256_storeu_ps(pre + l, v);
    const __m256 above = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_loadu_ps(thr + l), _CMP_GT_OQ),
                                       _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
    const __m256 keep = _mm256_or_ps(above, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    mask |= uint64_t(unsigned(_mm256_movemask_ps(keep))) << l;
  }
  return mask | (l < lanes ? portable::screen_threshold<float>(pre + l, bias + l, thr + l, lanes - l) << l : 0);
}

// Decode: a chunk of up to 8 ymm (64 floats) of the output row stays in registers while the k
// weight rows stream past, each prefetched kDecodeAhead rows early. A tail under 8 floats goes
// through the portable loop.
constexpr index_t kDecodeChunk = 64;
template <class W, int NV>
void decode_chunk(index_t k, const float* values, const index_t* indices, index_t avail, const W* w, index_t rows,
                  index_t ld_row,
                  index_t c0, index_t d, const float* bias, float* out) {
  __m256 acc[NV];
#pragma GCC unroll 8
  for (int c = 0; c < NV; ++c) acc[c] = bias != nullptr ? _mm256_loadu_ps(bias + c0 + 8 * c) : _mm256_setzero_ps();
  for (index_t j = 0; j < k; ++j) {
    portable::prefetch_ahead(indices, avail, j, w, rows, ld_row, c0, d);
    const index_t f = indices[j];
    const float v = values[j];
    if (f < 0 || f >= rows || v == 0.0f) continue;
    const W* src = w + f * ld_row + c0;
    const __m256 vv = _mm256_set1_ps(v);
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) acc[c] = _mm256_fmadd_ps(vv, load8(src + 8 * c), acc[c]);
  }
#pragma GCC unroll 8
  for (int c = 0; c < NV; ++c) _mm256_storeu_ps(out + c0 + 8 * c, acc[c]);
}

template <class W>
void decode_row(index_t k, const float* values, const index_t* indices, index_t avail, const W* w, index_t rows,
                index_t ld_row, index_t d, const float* bias, float* out) {
  index_t c0 = 0;
  for (; c0 + 64 <= d; c0 += 64) decode_chunk<W, 8>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out);
  const index_t left = (d - c0) / 8;
  switch (left) {
    case 1: decode_chunk<W, 1>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    case 2: decode_chunk<W, 2>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    case 3: decode_chunk<W, 3>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    case 4: decode_chunk<W, 4>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    case 5: decode_chunk<W, 5>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    case 6: decode_chunk<W, 6>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    case 7: decode_chunk<W, 7>(k, values, indices, avail, w, rows, ld_row, c0, d, bias, out); break;
    default: break;
  }
  c0 += 8 * left;
  if (c0 < d)  // the last d % 8 columns
    portable::decode_row<W>(k, values, indices, avail, w + c0, rows, ld_row, d - c0,
                            bias != nullptr ? bias + c0 : nullptr, out + c0);
}

// 12 independent FMA chains in 16 ymm registers.
double fma_probe(index_t iters, double* flops) {
  __m256 acc[12];
  for (int c = 0; c < 12; ++c) acc[c] = _mm256_set1_ps(0.001f * float(c));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (index_t it = 0; it < iters; ++it)
#pragma GCC unroll 12
    for (int c = 0; c < 12; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  __m256 sum = acc[0];
  for (int c = 1; c < 12; ++c) sum = _mm256_add_ps(sum, acc[c]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  double total = 0;
  for (float v : lanes) total += v;
  *flops = double(iters) * 12 * 8 * 2;
  return total;
}

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

const IsaKernels kTable = {
    "avx2", 10, supported,
    {tile<float>, 6, 1},
    {tile<bf16>, 6, 1},
    {tile<f16>, 6, 1},
    {portable::tile<double, double>, 4, 1},
    {screen_topk, screen_threshold},
    {portable::screen_topk<double>, portable::screen_threshold<double>},
    decode_row<float>, decode_row<bf16>, decode_row<f16>,
    fma_probe,
    portable::dot_row<float>, portable::dot_row<bf16>, portable::dot_row<f16>, portable::axpy,
};

}  // namespace

const IsaKernels* const kAvx2Kernels = &kTable;

}  // namespace sae
