// Per-row candidate lists for the fused encode: the ranking rule and the top-k buffer.
//
// Ranking (the contract in docs/design.md): larger first, ties to the lower latent index. NaN ranks
// above every number, as torch.topk does, so a row whose pre-activations are NaN yields NaN
// codes instead of silently dropping them.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"

namespace sae {

template <class T> struct Cand {
  T key;
  index_t idx;
};

template <class T> inline bool ranks_before(const Cand<T>& a, const Cand<T>& b) {
  const bool a_nan = std::isnan(a.key), b_nan = std::isnan(b.key);
  if (a_nan || b_nan) return a_nan == b_nan ? a.idx < b.idx : a_nan;
  if (a.key != b.key) return a.key > b.key;
  return a.idx < b.idx;
}

template <class T> inline T relu(T v) { return v > T(0) ? v : (std::isnan(v) ? v : T(0)); }

// Candidates of one row for top-k. Holds up to `cap` (> k) entries; when full it keeps the best
// k with nth_element and raises the admission bar to the k-th best key. Latents reach a buffer in
// increasing index order, so a later key equal to the bar loses the tie and is rejected: a
// strict comparison is exact. A NaN bar means k NaNs are held; nothing later can beat them.
template <class T> class TopKBuffer {
 public:
  TopKBuffer(Cand<T>* storage, index_t k, index_t cap) : data_(storage), k_(k), cap_(cap) {}

  // One compare in the hot loop: false for keys that cannot enter the top k.
  bool admits(T key) const { return !closed_ && !(key <= bar_); }

  void push(T key, index_t idx) {
    if (size_ == cap_) shrink();
    data_[size_++] = Cand<T>{key, idx};
  }

  T bar() const { return closed_ ? std::numeric_limits<T>::infinity() : bar_; }
  bool closed() const { return closed_; }
  index_t size() const { return size_; }
  const Cand<T>* data() const { return data_; }

 private:
  void shrink() {
    std::nth_element(data_, data_ + (k_ - 1), data_ + size_, ranks_before<T>);
    size_ = k_;
    bar_ = data_[k_ - 1].key;
    if (std::isnan(bar_)) closed_ = true;
  }

  Cand<T>* data_;
  index_t k_, cap_;
  index_t size_ = 0;
  T bar_ = -std::numeric_limits<T>::infinity();
  bool closed_ = false;
};

// The better of two GroupMax picks: larger relu value, NaN above numbers (torch.max), then lower index.
template <class T> inline bool better_pick(T v, index_t i, T best_v, index_t best_i) {
  const bool vn = std::isnan(v), bn = std::isnan(best_v);
  if (vn || bn) return vn && (!bn || i < best_i);
  return v > best_v || (v == best_v && i < best_i);
}

// Capacity of a top-k buffer: room for about k more before a shrink.
inline index_t topk_capacity(index_t k) { return 2 * k + 16; }

// Picks the final top-k of a row from `cands` (any order; may hold more than k or, when some
// pre-activations were -inf and never admitted, fewer), then writes values = relu(key) sorted by
// value descending with ties to the lower index, and their indices. Missing slots are the
// lowest-index latents not present (all of them had pre-activation -inf).
template <class T, class Out>
void finish_topk_row(std::vector<Cand<T>>& cands, index_t k, index_t d_sae, Out* values,
                     index_t* indices) {
  if (index_t(cands.size()) > k) {
    std::nth_element(cands.begin(), cands.begin() + (k - 1), cands.end(), ranks_before<T>);
    cands.resize(size_t(k));
  }
  if (index_t(cands.size()) < k) {
    std::sort(cands.begin(), cands.end(),
              [](const Cand<T>& a, const Cand<T>& b) { return a.idx < b.idx; });
    std::vector<Cand<T>> fill;
    size_t pos = 0;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (index_t j = 0; j < d_sae && index_t(cands.size() + fill.size()) < k; ++j) {
      if (pos < cands.size() && cands[pos].idx == j) { ++pos; continue; }
      fill.push_back(Cand<T>{neg_inf, j});
    }
    cands.insert(cands.end(), fill.begin(), fill.end());
  }
  for (auto& c : cands) c.key = relu(c.key);
  std::sort(cands.begin(), cands.end(), ranks_before<T>);
  for (index_t j = 0; j < k; ++j) {
    values[j] = Out(cands[size_t(j)].key);
    indices[j] = cands[size_t(j)].idx;
  }
}

}  // namespace sae
