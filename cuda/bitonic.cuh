// Bitonic sorts of candidate keys (keys.h) in shared memory, descending: the codes' order. The
// size is a power of two; unused slots hold key 0, which sorts last. The passes' pairs are
// disjoint, so the threads of a pass need no ordering among themselves, only a barrier after it.
#pragma once

#include "common.cuh"

namespace sae_cuda {

// Sorts a[0, N) with the 32 lanes of one warp (N a power of two, >= 2).
template <int N> __device__ void warp_sort_desc(uint64_t* a, int lane) {
  __syncwarp();
#pragma unroll 1
  for (int size = 2; size <= N; size <<= 1)
#pragma unroll 1
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = lane; i < N / 2; i += 32) bitonic_pass(a, i, size, stride);
      __syncwarp();
    }
}

// The smallest power of two >= n (1 for n <= 1).
__host__ __device__ inline int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Sorts a[0, n) with the whole block (n a power of two, >= 1).
__device__ inline void block_sort_desc(uint64_t* a, int n) {
  __syncthreads();
  for (int size = 2; size <= n; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) bitonic_pass(a, i, size, stride);
      __syncthreads();
    }
}

}  // namespace sae_cuda
