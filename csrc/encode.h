// Fused encode: pre-activation, bias, activation and selection in one pass over packed W_enc.
// Nothing of size N x d_sae is ever allocated.
#pragma once

#include <vector>

#include "candidates.h"
#include "common.h"

namespace sae {

template <class T> struct EncodeInputs {
  index_t n = 0, d_in = 0, d_sae = 0;
  const T* x = nullptr;          // [n, d_in], rows contiguous
  const T* b_enc = nullptr;      // [d_sae]
  const T* b_dec = nullptr;      // [d_in], subtracted from x first; null: not subtracted
  const T* threshold = nullptr;  // [d_sae] (threshold SAEs); null: ReLU (threshold 0)
};

// TopK: the k largest pre-activations of each row; writes relu of them sorted by value descending
// (ties to the lower index) into values [n, k] and their latents into indices [n, k].
template <class T, class W>
void encode_topk(const EncodeInputs<T>& in, const W* packed, index_t k, T* values,
                 index_t* indices);

// GroupMax (sparsify): the latents split into k contiguous groups of d_sae / k; each row keeps the
// largest relu(pre) of every group (ties to the lower index, NaN wins as in torch.max). Writes the
// k picks sorted by value descending (ties to the lower index) into values / indices [n, k].
template <class T, class W>
void encode_groupmax(const EncodeInputs<T>& in, const W* packed, index_t k, T* values, index_t* indices);

// Threshold SAEs (JumpReLU; ReLU is threshold 0): variable-length codes, one list per row.
template <class T> struct ThresholdCodes {
  std::vector<index_t> offsets;  // [n + 1]: row r's entries are [offsets[r], offsets[r + 1])
  std::vector<Cand<T>> entries;  // value, latent; each row sorted by value descending
  index_t max_count = 0;

  // Writes the codes padded to `width` (>= max_count): values 0 and indices -1 past a row's
  // count. values and indices are [n, width], counts [n].
  template <class Out> void write(index_t width, Out* values, index_t* indices, index_t* counts) const;
};

// With compact_nonfinite, a row whose active latents include a non-finite value (NaN, or +inf)
// keeps only the lowest such latent, with its value: one bad token (a NaN in x makes every latent
// NaN, so active) cannot widen the whole batch's codes to d_sae. Its reconstruction is still
// non-finite, as the dense formula's is. Without it, every active latent is kept (the formula).
template <class T, class W>
ThresholdCodes<T> encode_threshold(const EncodeInputs<T>& in, const W* packed, bool compact_nonfinite);

}  // namespace sae
