// The VPERMW index that interleaves two 16-wide rows of bf16 into (row0[l], row1[l]) pairs, the
// layout VDPBF16PS and TDPBF16PS read: element 2l of the result is element l of the first row
// (lanes 0..15), element 2l+1 element l of the second (lanes 16..31). Shared by the avx512_bf16
// and amx variants; include only from files compiled with -mavx512bw.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace sae {

inline __m512i bf16_pair_index() {
  alignas(64) static const uint16_t idx[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                               8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_load_si512(idx);
}

}  // namespace sae
