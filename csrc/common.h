// Scalar types shared by every kernel: the index type, 16-bit weight storage and widening.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "dtype.h"

namespace sae {

// All index math is 64-bit: N * d_sae routinely exceeds 2^31.
using index_t = int64_t;

// 16-bit weight storage. Kernels read these and widen to float in registers.
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

static inline float widen_bf16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float -> bf16, rounded to nearest even (NaN stays a quiet NaN of the same sign).
static inline uint16_t round_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// IEEE half -> float without F16C (the generic path must run everywhere).
static inline float widen_f16(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {                // inf / nan
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {            // normal
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {            // signed zero
    bits = sign;
  } else {                          // subnormal: renormalise
    int e = -1;
    do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// widen<Acc>(w): a weight of any storage type as the accumulation type.
// (static: each translation unit keeps its own copy, so a copy compiled with AVX-512 flags in a
// per-ISA kernel file can never be the one the linker hands to the generic code.)
template <class Acc> static inline Acc widen(float w) { return Acc(w); }
template <class Acc> static inline Acc widen(double w) { return Acc(w); }
template <class Acc> static inline Acc widen(bf16 w) { return Acc(widen_bf16(w.bits)); }
template <class Acc> static inline Acc widen(f16 w) { return Acc(widen_f16(w.bits)); }

// A strided 2-D view of weights: element (r, c) lives at data[r * row_stride + c * col_stride].
// Kernels read W_dec rows and W_enc columns through this, so transposed views cost no copy.
template <class W> struct Strided {
  const W* data;
  index_t rows, cols, row_stride, col_stride;
  const W* row(index_t r) const { return data + r * row_stride; }
};

}  // namespace sae
