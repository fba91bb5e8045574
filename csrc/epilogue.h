// The native epilogue of the GEMM encode path. There, the pre-activations of a block of rows x a
// chunk of latents come from the device's vendor GEMM (torch.matmul: MKL or oneDNN on CPUs) into a
// reused buffer, and an EncodeAccumulator turns each buffer into codes while it is still in cache:
// bias, activation, the SIMD screen against each row's running k-th value, the candidate buffers,
// the merge, threshold compaction. Nothing of size N x d_sae exists; the accumulator holds
// O(N x k) (threshold SAEs: the active latents).
//
// Results equal the fused encode's (csrc/encode.h) bit for bit when the GEMM's sums are: the
// ranking, ties, NaN and non-finite rules are the same code (candidates.h, the ISA screens).
#pragma once

#include <vector>

#include "candidates.h"
#include "common.h"
#include "encode.h"

namespace sae {

enum class EncodeKind : int { topk = 0, groupmax = 1, threshold = 2 };

template <class T> class EncodeAccumulator {
 public:
  using value_type = T;

  // threshold: [d_sae] (threshold kind; null: ReLU). compact_nonfinite: encode.h's rule.
  EncodeAccumulator(EncodeKind kind, index_t n, index_t k, index_t d_sae, const T* threshold,
                    bool compact_nonfinite);

  // pre [rows, ld] (row-major, ld >= cols): rows [r0, r0 + rows) x latents [l0, l0 + cols), without
  // the bias; the bias is added in place. Per row, latents must arrive in increasing order: chunks
  // in order of l0 (any order of row blocks).
  void add(T* pre, index_t ld, index_t r0, index_t rows, index_t l0, index_t cols, const T* b_enc);

  // topk / groupmax: values and indices [n, k].
  void finish_k(T* values, index_t* indices);
  // threshold: the codes, padded by the caller (ThresholdCodes::write).
  ThresholdCodes<T> finish_threshold();

  EncodeKind kind() const { return kind_; }

 private:
  EncodeKind kind_;
  index_t n_, k_, d_sae_, cap_;
  const T* threshold_;
  bool compact_;
  std::vector<T> zeros_;                       // the ReLU threshold
  std::vector<Cand<T>> storage_;               // topk: n x cap candidates; groupmax: n x k picks
  std::vector<TopKBuffer<T>> bufs_;            // topk
  std::vector<std::vector<Cand<T>>> lists_;    // threshold: each row's active latents
  std::vector<char> bad_;                      // threshold, compact: a row cut to its non-finite latent
};

}  // namespace sae
