#include "steer.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "interrupt.h"
#include "isa.h"
#include "sparse_rows.h"
#include "thread_pool.h"

namespace sae {
namespace {

// Which clamped features lie in [0, d_sae): the others are counted in `check` and never read.
template <class T>
std::vector<char> valid_features(const Clamp<T>& clamp, index_t d_sae, IndexCheck* check) {
  std::vector<char> ok(size_t(clamp.count));
  for (index_t c = 0; c < clamp.count; ++c) {
    const index_t f = clamp.features[c];
    ok[size_t(c)] = f >= 0 && f < d_sae;
    if (!ok[size_t(c)] && check != nullptr) check->note(f);
  }
  return ok;
}

// Widened copies of W_dec's clamped rows: |C| x d_in, small, read once per output row (zeros for
// a skipped feature).
template <class T, class W>
std::vector<T> gather_rows(const Strided<W>& w, const Clamp<T>& clamp, const std::vector<char>& ok) {
  const index_t d = w.cols;
  std::vector<T> out(size_t(clamp.count * d), T(0));
  for (index_t c = 0; c < clamp.count; ++c) {
    if (!ok[size_t(c)]) continue;
    const W* src = w.row(clamp.features[c]);
    for (index_t i = 0; i < d; ++i) out[size_t(c * d + i)] = widen<T>(src[i * w.col_stride]);
  }
  return out;
}

template <class T>
void add_deltas(index_t d, const std::vector<T>& dec_rows, const T* deltas, index_t count, T* yr) {
  for (index_t c = 0; c < count; ++c) {
    const T dl = deltas[c];
    if (dl == T(0)) continue;
    const T* wr = dec_rows.data() + c * d;
    for (index_t i = 0; i < d; ++i) yr[i] += dl * wr[i];
  }
}

index_t grain(index_t work_per_row) { return std::max<index_t>(1, 32768 / std::max<index_t>(work_per_row, 1)); }

}  // namespace

template <class T, class W>
void steer_threshold(index_t n, const T* x, const Strided<W>& w_enc, const T* b_enc,
                     const T* threshold, const T* b_dec, const Strided<W>& w_dec,
                     const Clamp<T>& clamp, T* y, T* z, IndexCheck* feature_check) {
  const index_t d = w_dec.cols, count = clamp.count;
  const std::vector<char> ok = valid_features(clamp, w_dec.rows, feature_check);
  // Columns f of W_enc, made contiguous: [count][d].
  std::vector<T> enc_cols(size_t(count * d), T(0));
  for (index_t c = 0; c < count; ++c)
    if (ok[size_t(c)])
      for (index_t i = 0; i < d; ++i)
        enc_cols[size_t(c * d + i)] = widen<T>(w_enc.row(i)[clamp.features[c] * w_enc.col_stride]);
  const std::vector<T> dec_rows = gather_rows(w_dec, clamp, ok);
  // The encode's rule: where the variant multiplies bf16 weights on bf16 units, it multiplies
  // u = x - b_dec rounded to bf16 (docs/design.md), so the clamped features' z match the codes'.
  const bool round_u = std::is_same<W, bf16>::value && active_kernels().bf16w.bf16_fn != nullptr;

  parallel_range(n, grain(2 * count * d + d), [&](index_t r0, index_t r1) {
    std::vector<T> deltas(static_cast<size_t>(count));
    std::vector<T> u(static_cast<size_t>(d));
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      const T* xr = x + r * d;
      for (index_t i = 0; i < d; ++i) {
        const T ui = b_dec != nullptr ? xr[i] - b_dec[i] : xr[i];
        u[size_t(i)] = round_u ? T(widen_bf16(round_to_bf16(float(ui)))) : ui;
      }
      for (index_t c = 0; c < count; ++c) {
        if (!ok[size_t(c)]) {
          z[r * count + c] = T(0);
          deltas[size_t(c)] = T(0);
          continue;
        }
        const T* we = enc_cols.data() + c * d;
        T pre = 0;
        for (index_t i = 0; i < d; ++i) pre += u[size_t(i)] * we[i];
        const index_t f = clamp.features[c];
        pre += b_enc[f];
        const T thr = threshold != nullptr ? threshold[f] : T(0);
        // Same rule as the threshold encode: relu(pre) * (pre > thr), NaN kept.
        const T zf = std::isnan(pre) ? pre : ((pre > thr && pre > T(0)) ? pre : T(0));
        z[r * count + c] = zf;
        deltas[size_t(c)] = clamp_delta(zf, clamp.targets[c], clamp.mode, clamp.only_active);
      }
      T* yr = y + r * d;
      std::copy(xr, xr + d, yr);
      add_deltas(d, dec_rows, deltas.data(), count, yr);
    }
  });
}

template <class T, class W>
void steer_codes(index_t n, index_t k, const T* x, const T* values, const index_t* indices,
                 const Strided<W>& w_dec, const T* b_dec, bool keep_error,
                 const Clamp<T>& clamp, T* y, T* z, IndexCheck* check, IndexCheck* feature_check) {
  const index_t d = w_dec.cols, count = clamp.count;
  const std::vector<char> ok = valid_features(clamp, w_dec.rows, feature_check);
  const std::vector<T> dec_rows = gather_rows(w_dec, clamp, ok);
  parallel_range(n, grain(count * (k + d) + (keep_error ? d : k * d)), [&](index_t r0, index_t r1) {
    std::vector<T> deltas(static_cast<size_t>(count));
    if (check != nullptr) check->scan(indices + r0 * k, (r1 - r0) * k, w_dec.rows);
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      const T* vr = values + r * k;
      const index_t* ir = indices + r * k;
      T* yr = y + r * d;
      if (keep_error) {
        std::copy(x + r * d, x + (r + 1) * d, yr);
      } else {
        if (b_dec != nullptr)
          std::copy(b_dec, b_dec + d, yr);
        else
          std::fill(yr, yr + d, T(0));
        accumulate_row(k, vr, ir, w_dec, yr);
      }
      for (index_t c = 0; c < count; ++c) {
        T zf = 0;
        for (index_t j = 0; j < k; ++j)
          if (ir[j] == clamp.features[c]) { zf = vr[j]; break; }
        z[r * count + c] = zf;
        deltas[size_t(c)] = ok[size_t(c)] ? clamp_delta(zf, clamp.targets[c], clamp.mode, clamp.only_active) : T(0);
      }
      add_deltas(d, dec_rows, deltas.data(), count, yr);
    }
  });
}

#define SAE_INSTANTIATE_STEER(T, W)                                                              \
  template void steer_threshold<T, W>(index_t, const T*, const Strided<W>&, const T*, const T*,  \
                                      const T*, const Strided<W>&, const Clamp<T>&, T*, T*,      \
                                      IndexCheck*);                                              \
  template void steer_codes<T, W>(index_t, index_t, const T*, const T*, const index_t*,          \
                                  const Strided<W>&, const T*, bool, const Clamp<T>&, T*, T*,     \
                                  IndexCheck*, IndexCheck*);
SAE_INSTANTIATE_STEER(float, float)
SAE_INSTANTIATE_STEER(float, bf16)
SAE_INSTANTIATE_STEER(float, f16)
SAE_INSTANTIATE_STEER(double, double)
#undef SAE_INSTANTIATE_STEER

}  // namespace sae
