// Candidate keys: a latent's candidacy as one uint64 whose unsigned order is the codes' order,
// value descending (NaN above everything, as torch.topk ranks it; -0 equal to +0), then latent
// ascending. Shared by the kernels and the host (bindings.cpp exposes it to the CPU tests):
//   high 32 bits: the float's bits mapped to an order-preserving unsigned key
//   low 32 bits:  0xFFFFFFFF - latent
// Key 0 never names a latent (it would need latent 2^32 - 1), so it marks an empty slot.
// Sorting keys is a bitonic network of the compare-exchanges below.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SAE_HD __host__ __device__ __forceinline__
#else
#define SAE_HD inline
#endif

namespace sae_cuda {

SAE_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
#endif
}

SAE_HD float float_of_bits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

SAE_HD uint32_t float_order_key(float v) {
  if (v != v) return 0xFFFFFFFFu;  // every NaN: the largest key
  if (v == 0.0f) v = 0.0f;         // -0 -> +0
  const uint32_t bits = float_bits(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

SAE_HD float float_from_order_key(uint32_t key) {
  return float_of_bits((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

SAE_HD uint64_t candidate_key(float value, uint32_t latent) {
  return (uint64_t(float_order_key(value)) << 32) | uint64_t(0xFFFFFFFFu - latent);
}
SAE_HD float candidate_value(uint64_t key) { return float_from_order_key(uint32_t(key >> 32)); }
SAE_HD int64_t candidate_latent(uint64_t key) { return int64_t(0xFFFFFFFFu - uint32_t(key & 0xFFFFFFFFu)); }

// One compare-exchange of a bitonic network over a[0, n) sorting descending: pair number i of the
// pass with run length `size` and partner distance `stride` (bitonic.cuh runs the passes; the
// host copy lets the CPU tests check the network).
SAE_HD void bitonic_pass(uint64_t* a, int i, int size, int stride) {
  const int lo = 2 * i - (i & (stride - 1));  // the partner is lo + stride
  const int hi = lo + stride;
  const bool descending = (lo & size) == 0;   // the final run (size = n) is all descending
  const uint64_t x = a[lo], y = a[hi];
  if ((x < y) == descending) {
    a[lo] = y;
    a[hi] = x;
  }
}

}  // namespace sae_cuda
