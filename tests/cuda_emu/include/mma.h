// Stands in for CUDA's mma.h in the emulator build: the part of nvcuda::wmma the kernels use.
// Operand fragments: every lane holds the whole tile. Accumulators: lane l owns elements
// l, l + 32, ... (the hardware also spreads them over the warp, in an unspecified layout, so
// correct code never depends on which lane holds what); mma_sync computes and store_matrix_sync
// writes only the lane's own elements, so a tile is complete only once all 32 lanes stored it.
// The *_sync calls are warp collectives: all 32 lanes must reach them together, as on the hardware.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

inline float as_float(float v) { return v; }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float as_float(__half v) { return __half2float(v); }

inline void converge() { ::emu::warp_collective(::emu::Collective::wmma, 0xFFFFFFFFu, 0, 0); }

// The WMMA API's rules for the memory side: a 256-bit aligned pointer, and a leading dimension that
// is a multiple of 16 bytes (8 elements of 16 bits, 4 of 32). The hardware's behaviour otherwise is
// undefined; here it is an error.
template <class T> void check_operand(const T* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) throw "emulator: wmma pointer not 256-bit aligned";
  if ((ldm * sizeof(T)) % 16 != 0) throw "emulator: wmma leading dimension not a multiple of 16 bytes";
}
inline int lane() { return int(::emu::thread_idx().x % 32); }
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
  static constexpr int rows = detail::shape<Use, M, N, K>::rows;
  static constexpr int cols = detail::shape<Use, M, N, K>::cols;
  static constexpr bool col_layout = std::is_same<Layout, col_major>::value;
  static constexpr int num_elements = rows * cols;
  T x[rows * cols];
};

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, T v) {
  for (auto& e : f.x) e = v;
}

template <class Use, int M, int N, int K, class T, class L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  detail::converge();
  detail::check_operand(p, ldm);
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = F::col_layout ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, class T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::converge();
  detail::check_operand(p, ldm);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K, class T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::converge();
  detail::check_operand(p, ldm);
  for (int e = detail::lane(); e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}

// d = a b + c with fp32 products of the 16-bit inputs (exact) and fp32 accumulation.
template <int M, int N, int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  detail::converge();
  for (int e = detail::lane(); e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    float acc = c.x[e];
    for (int kk = 0; kk < K; ++kk) acc += detail::as_float(a.x[i * K + kk]) * detail::as_float(b.x[kk * N + j]);
    d.x[e] = acc;
  }
}

}  // namespace wmma
}  // namespace nvcuda
