// The GEMM half of the fused encode: one CTA computes a BM x BN tile of u @ W_enc (fp32) over the
// whole d_in and leaves it in shared memory (Cs, row stride LDC) for the epilogue, which filters
// it into sparse codes. Nothing of size N x d_sae ever reaches global memory.
//
// Two mainloops with one interface:
//   TensorCoreTile<T>  T = __nv_bfloat16 or __half: WMMA 16x16x16 (mma.sync) with fp32
//                      accumulators, cp.async double-buffered operand tiles (sm_80+).
//   SimtTile           fp32 operands and FMA (no TF32: fp32 weights keep fp32 products).
// and a third for the cuBLAS path, PreactTile: pre-activations a GEMM already wrote.
// Both take u [n, d_in] and W_enc [d_in, d_sae] row-major; rows/latents past the edges read as 0.
#pragma once

#include <mma.h>

#include "common.cuh"
#include "launch.h"

namespace sae_cuda {

constexpr int BM = kTileM;        // rows of u per CTA
constexpr int BN = kTileN;        // latents per tile
constexpr int THREADS = 256;      // 8 warps
constexpr int WARPS = THREADS / 32;
constexpr int LDC = BN + 4;       // staging tile row stride in floats (16-byte multiple for WMMA)
constexpr size_t kStageBytes = size_t(BM) * LDC * sizeof(float);

struct GemmArgs {
  const void* u;      // [n, d_in]
  const void* w;      // [d_in, d_sae]
  index_t n, d_in, d_sae;
  bool vec;           // 16-byte loads: d_in and d_sae multiples of 8, both pointers 16-byte aligned
};

#if defined(SAE_CUDA_EMULATOR)
// tests/cuda_emu: the CPU emulator stands in for the three PTX instructions.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) { emu::cp_async16(smem, gmem, pred); }
__device__ __forceinline__ void cp_async_commit() { emu::cp_async_commit(); }
template <int N> __device__ __forceinline__ void cp_async_wait() { emu::cp_async_wait(N); }
#else
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = pred ? 16 : 0;  // 0: the 16 bytes are zero-filled, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif

template <class T> __device__ __forceinline__ T zero_of();
template <> __device__ __forceinline__ __nv_bfloat16 zero_of() { return __float2bfloat16(0.0f); }
template <> __device__ __forceinline__ __half zero_of() { return __float2half(0.0f); }

template <class T>
struct TensorCoreTile {
  static constexpr int BK = 32;
  static constexpr int LDA = BK + 8;   // padded rows: fewer bank conflicts, 16-byte aligned rows
  static constexpr int LDB = BN + 8;
  static constexpr int A_STAGE = BM * LDA;
  static constexpr int B_STAGE = BK * LDB;
  static constexpr size_t kOperandBytes = 2 * size_t(A_STAGE + B_STAGE) * sizeof(T);

  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

  __device__ static void load_stage(const GemmArgs& g, T* As, T* Bs, index_t row0, index_t col0, index_t k0) {
    const T* u = static_cast<const T*>(g.u);
    const T* w = static_cast<const T*>(g.w);
    const int tid = threadIdx.x;
    if (g.vec) {
      for (int v = tid; v < BM * BK / 8; v += THREADS) {
        const int r = v / (BK / 8), c = (v % (BK / 8)) * 8;
        const index_t gr = row0 + r, gc = k0 + c;
        const bool ok = gr < g.n && gc < g.d_in;
        cp_async16(As + r * LDA + c, ok ? u + gr * g.d_in + gc : u, ok);
      }
      for (int v = tid; v < BK * BN / 8; v += THREADS) {
        const int r = v / (BN / 8), c = (v % (BN / 8)) * 8;
        const index_t gr = k0 + r, gc = col0 + c;
        const bool ok = gr < g.d_in && gc < g.d_sae;
        cp_async16(Bs + r * LDB + c, ok ? w + gr * g.d_sae + gc : w, ok);
      }
    } else {
      for (int e = tid; e < BM * BK; e += THREADS) {
        const int r = e / BK, c = e % BK;
        const index_t gr = row0 + r, gc = k0 + c;
        As[r * LDA + c] = (gr < g.n && gc < g.d_in) ? u[gr * g.d_in + gc] : zero_of<T>();
      }
      for (int e = tid; e < BK * BN; e += THREADS) {
        const int r = e / BN, c = e % BN;
        const index_t gr = k0 + r, gc = col0 + c;
        Bs[r * LDB + c] = (gr < g.d_in && gc < g.d_sae) ? w[gr * g.d_sae + gc] : zero_of<T>();
      }
    }
  }

  // Warp (wm, wn) of the 2 x 4 warp grid owns the 32 x 32 block at (32 wm, 32 wn).
  __device__ static void mma_stage(const T* As, const T* Bs, FragC (&acc)[2][2]) {
    const int warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      FragA a[2];
      FragB b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * LDA + kk, LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(b[j], Bs + kk * LDB + wn * 32 + j * 16, LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }

  // smem: kOperandBytes of operand stages, aliased by the fp32 staging tile Cs.
  __device__ static void tile(const GemmArgs& g, index_t row0, index_t col0, unsigned char* smem, float* Cs) {
    T* As = reinterpret_cast<T*>(smem);
    T* Bs = As + 2 * A_STAGE;
    FragC acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
    __syncthreads();  // the previous tile's epilogue has finished reading Cs (aliased here)
    const index_t ktiles = (g.d_in + BK - 1) / BK;
    if (ktiles > 0) {
      load_stage(g, As, Bs, row0, col0, 0);
      cp_async_commit();
    }
    for (index_t kt = 0; kt < ktiles; ++kt) {
      const int cur = int(kt & 1);
      if (kt + 1 < ktiles) {
        load_stage(g, As + (cur ^ 1) * A_STAGE, Bs + (cur ^ 1) * B_STAGE, row0, col0, (kt + 1) * BK);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      mma_stage(As + cur * A_STAGE, Bs + cur * B_STAGE, acc);
      __syncthreads();  // everyone is done with stage `cur` before it is refilled
    }
    const int warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                        nvcuda::wmma::mem_row_major);
    __syncthreads();
  }
};

struct SimtTile {
  static constexpr int BK = 16;
  static constexpr int LDA = BM + 4;   // A is stored transposed, [BK][BM]: broadcast reads of a column
  static constexpr int LDB = BN + 4;
  static constexpr size_t kOperandBytes = size_t(BK) * (LDA + LDB) * sizeof(float);

  // Thread (ty, tx) of a 16 x 16 grid computes rows 4 ty .. 4 ty + 3 and columns 4 tx .. 4 tx + 3
  // and 64 + 4 tx .. 64 + 4 tx + 3 (two groups: conflict-free float4 reads of B).
  __device__ static void tile(const GemmArgs& g, index_t row0, index_t col0, unsigned char* smem, float* Cs) {
    const float* u = static_cast<const float*>(g.u);
    const float* w = static_cast<const float*>(g.w);
    float* As = reinterpret_cast<float*>(smem);
    float* Bs = As + BK * LDA;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    float acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    for (index_t k0 = 0; k0 < g.d_in; k0 += BK) {
      __syncthreads();  // previous stage consumed (and, at k0 = 0, the previous epilogue's Cs reads)
      for (int e = tid; e < BM * BK; e += THREADS) {
        const int r = e / BK, c = e % BK;
        const index_t gr = row0 + r, gc = k0 + c;
        As[c * LDA + r] = (gr < g.n && gc < g.d_in) ? u[gr * g.d_in + gc] : 0.0f;
      }
      for (int e = tid; e < BK * BN; e += THREADS) {
        const int r = e / BN, c = e % BN;
        const index_t gr = k0 + r, gc = col0 + c;
        Bs[r * LDB + c] = (gr < g.d_in && gc < g.d_sae) ? w[gr * g.d_sae + gc] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        const float4 a4 = *reinterpret_cast<const float4*>(As + kk * LDA + ty * 4);
        const float4 b0 = *reinterpret_cast<const float4*>(Bs + kk * LDB + tx * 4);
        const float4 b1 = *reinterpret_cast<const float4*>(Bs + kk * LDB + 64 + tx * 4);
        const float a[4] = {a4.x, a4.y, a4.z, a4.w};
        const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();  // Cs aliases As/Bs
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        Cs[(ty * 4 + i) * LDC + tx * 4 + j] = acc[i][j];
        Cs[(ty * 4 + i) * LDC + 64 + tx * 4 + j] = acc[i][j + 4];
      }
    __syncthreads();
  }
};

// The cuBLAS path's "mainloop": the tile's pre-activations were already computed by a GEMM
// (torch.mm, fp32 output) into a row-major [n, d_sae] fp32 buffer, passed as g.u; the tile copies
// them into Cs, so the fused kernels' epilogues serve that path unchanged (g.w and g.d_in unused).
struct PreactTile {
  static constexpr size_t kOperandBytes = 0;

  __device__ static void tile(const GemmArgs& g, index_t row0, index_t col0, unsigned char*, float* Cs) {
    const float* pre = static_cast<const float*>(g.u);
    __syncthreads();  // the previous epilogue's Cs reads are done
    for (int e = threadIdx.x; e < BM * BN; e += THREADS) {
      const int r = e / BN, c = e % BN;
      const index_t gr = row0 + r, gc = col0 + c;
      Cs[r * LDC + c] = (gr < g.n && gc < g.d_sae) ? pre[gr * g.d_sae + gc] : 0.0f;
    }
    __syncthreads();
  }
};

// Bytes of shared memory the tile needs: its operands, aliased by the staging tile, 128-aligned.
template <class Tile> __host__ __device__ constexpr size_t tile_smem_bytes() {
  return ((Tile::kOperandBytes > kStageBytes ? Tile::kOperandBytes : kStageBytes) + 127) / 128 * 128;
}

}  // namespace sae_cuda
