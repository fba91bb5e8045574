#include "epilogue.h"

#include <algorithm>
#include <limits>

#include "interrupt.h"
#include "isa.h"
#include "thread_pool.h"

namespace sae {
namespace {

constexpr int kLanes = 64;   // a screen's hit mask is a uint64

index_t row_grain(index_t cols) { return std::max<index_t>(1, 65536 / std::max<index_t>(cols, 1)); }

}  // namespace

template <class T>
EncodeAccumulator<T>::EncodeAccumulator(EncodeKind kind, index_t n, index_t k, index_t d_sae, const T* threshold,
                                        bool compact_nonfinite)
    : kind_(kind), n_(n), k_(k), d_sae_(d_sae), cap_(0), threshold_(threshold), compact_(compact_nonfinite) {
  switch (kind) {
    case EncodeKind::topk:
      cap_ = topk_capacity(k);
      storage_.resize(size_t(n * cap_));
      bufs_.reserve(size_t(n));
      for (index_t r = 0; r < n; ++r) bufs_.emplace_back(storage_.data() + r * cap_, k, cap_);
      break;
    case EncodeKind::groupmax:
      storage_.assign(size_t(n * k), Cand<T>{T(-1), -1});
      break;
    case EncodeKind::threshold:
      lists_.resize(size_t(n));
      bad_.assign(compact_nonfinite ? size_t(n) : 0, 0);
      if (threshold_ == nullptr) {
        zeros_.assign(size_t(d_sae), T(0));
        threshold_ = zeros_.data();
      }
      break;
  }
}

template <class T>
void EncodeAccumulator<T>::add(T* pre, index_t ld, index_t r0, index_t rows, index_t l0, index_t cols,
                               const T* b_enc) {
  const Screen<T> screen = screen_of<T>(active_kernels());
  parallel_range(rows, row_grain(cols), [&](index_t a, index_t b) {
    for (index_t i = a; i < b && !interrupted(); ++i) {
      const index_t row = r0 + i;
      T* p = pre + i * ld;
      for (index_t c = 0; c < cols; c += kLanes) {
        const int lanes = int(std::min<index_t>(kLanes, cols - c));
        const index_t first = l0 + c;
        switch (kind_) {
          case EncodeKind::topk: {
            TopKBuffer<T>& buf = bufs_[size_t(row)];
            if (buf.closed()) break;
            for (uint64_t hits = screen.topk(p + c, b_enc + first, lanes, buf.bar()); hits; hits &= hits - 1) {
              const int l = __builtin_ctzll(hits);
              buf.push(p[c + l], first + l);
            }
            break;
          }
          case EncodeKind::groupmax: {
            screen.topk(p + c, b_enc + first, lanes, std::numeric_limits<T>::infinity());   // adds the bias
            Cand<T>* best = storage_.data() + row * k_;
            const index_t group = d_sae_ / k_;
            for (int l = 0; l < lanes; ++l) {
              const index_t f = first + l;
              const T v = relu(p[c + l]);
              Cand<T>& b = best[f / group];
              if (better_pick(v, f, b.key, b.idx)) b = Cand<T>{v, f};
            }
            break;
          }
          case EncodeKind::threshold: {
            if (compact_ && bad_[size_t(row)]) break;
            std::vector<Cand<T>>& list = lists_[size_t(row)];
            for (uint64_t hits = screen.threshold(p + c, b_enc + first, threshold_ + first, lanes); hits;
                 hits &= hits - 1) {
              const int l = __builtin_ctzll(hits);
              if (compact_ && !std::isfinite(p[c + l])) {   // the row's lowest non-finite latent: the row's only entry
                list.assign(1, Cand<T>{p[c + l], first + l});
                bad_[size_t(row)] = 1;
                break;
              }
              list.push_back(Cand<T>{p[c + l], first + l});
            }
            break;
          }
        }
      }
    }
  });
}

template <class T> void EncodeAccumulator<T>::finish_k(T* values, index_t* indices) {
  parallel_range(n_, 64, [&](index_t a, index_t b) {
    std::vector<Cand<T>> row;
    for (index_t r = a; r < b && !interrupted(); ++r) {
      if (kind_ == EncodeKind::topk) {
        const TopKBuffer<T>& buf = bufs_[size_t(r)];
        row.assign(buf.data(), buf.data() + buf.size());
        finish_topk_row(row, k_, d_sae_, values + r * k_, indices + r * k_);
      } else {
        row.assign(storage_.begin() + r * k_, storage_.begin() + (r + 1) * k_);
        std::sort(row.begin(), row.end(), ranks_before<T>);
        for (index_t j = 0; j < k_; ++j) {
          values[r * k_ + j] = row[size_t(j)].key;
          indices[r * k_ + j] = row[size_t(j)].idx;
        }
      }
    }
  });
}

template <class T> ThresholdCodes<T> EncodeAccumulator<T>::finish_threshold() {
  ThresholdCodes<T> out;
  out.offsets.assign(size_t(n_ + 1), 0);
  for (index_t r = 0; r < n_; ++r) {
    const index_t count = index_t(lists_[size_t(r)].size());
    out.offsets[size_t(r + 1)] = out.offsets[size_t(r)] + count;
    out.max_count = std::max(out.max_count, count);
  }
  out.entries.resize(size_t(out.offsets.back()));
  parallel_range(n_, 64, [&](index_t a, index_t b) {
    for (index_t r = a; r < b && !interrupted(); ++r) {
      std::vector<Cand<T>>& list = lists_[size_t(r)];
      Cand<T>* dst = out.entries.data() + out.offsets[size_t(r)];
      std::copy(list.begin(), list.end(), dst);
      std::vector<Cand<T>>().swap(list);
      std::sort(dst, dst + (out.offsets[size_t(r + 1)] - out.offsets[size_t(r)]), ranks_before<T>);
    }
  });
  return out;
}

template class EncodeAccumulator<float>;
template class EncodeAccumulator<double>;

}  // namespace sae
