#include "encode.h"

#include <algorithm>
#include <limits>

#include "interrupt.h"
#include "isa.h"
#include "pack.h"
#include "thread_pool.h"

namespace sae {
namespace {

// How the work is cut: blocks of rows kept hot (u = x - b_dec of `row_block` rows) times
// ranges of panels. Large batches split rows only, so each task owns its rows' results. Small
// batches (token-by-token generation) are bound by reading W_enc, so the latents are split
// across threads too, and per-split candidates are merged afterwards.
struct Plan {
  index_t row_block = 1, n_row_blocks = 0, splits = 1, n_panels = 0;
  index_t tasks() const { return n_row_blocks * splits; }
  index_t panel_begin(index_t s) const { return s * n_panels / splits; }
};

template <class T>
Plan make_plan(index_t n, index_t d_in, index_t d_sae, int tile_rows) {
  Plan p;
  p.n_panels = num_panels(d_sae);
  const index_t threads = (n * d_in * d_sae < (index_t(1) << 16)) ? 1 : num_threads();
  // A block of u rows of about 128 KiB stays in L2 while the panels stream past it, but at least
  // 128 rows: each block streams all of W_enc from memory once, and with fewer rows per pass a
  // wide d_in (2304) turns the encode memory-bound (16 rows: 2 flops per byte of W_enc read,
  // below a 2-core machine's ~8; 128 rows cut the JumpReLU 2304 -> 16384 encode by 15-30%).
  index_t rows = std::max<index_t>(index_t(131072 / (std::max<index_t>(d_in, 1) * sizeof(T))), 128);
  rows = std::min<index_t>(rows, 256);
  if (n >= threads * tile_rows) rows = std::min(rows, (n + threads - 1) / threads);
  rows = std::max<index_t>(tile_rows, (rows + tile_rows - 1) / tile_rows * tile_rows);
  p.row_block = rows;
  p.n_row_blocks = (n + rows - 1) / rows;
  if (p.n_row_blocks < threads) {
    // A few splits per thread balance uneven panels; the merge is cheap (k candidates each).
    p.splits = std::min(p.n_panels, (4 * threads + p.n_row_blocks - 1) / p.n_row_blocks);
    p.splits = std::max<index_t>(p.splits, 1);
  }
  return p;
}

// Runs the blocked loop for one task and hands each finished tile row to
// `epilogue(row, first_panel, panels, acc_row)`, where acc_row holds panels * kPanel
// pre-activations without bias.
template <class T, class W, class Epilogue>
void run_task(const EncodeInputs<T>& in, const W* packed, const Plan& plan, index_t task, const Tile<T, W>& tile,
              std::vector<T>& u, Epilogue&& epilogue) {
  const index_t rb = task / plan.splits, s = task % plan.splits;
  const index_t r0 = rb * plan.row_block, r1 = std::min(in.n, r0 + plan.row_block);
  const index_t p0 = plan.panel_begin(s), p1 = plan.panel_begin(s + 1);
  const index_t d_in = in.d_in, panel_stride = d_in * kPanel;
  u.resize(size_t((r1 - r0) * d_in));
  for (index_t r = r0; r < r1; ++r) {
    const T* xr = in.x + r * d_in;
    T* ur = u.data() + (r - r0) * d_in;
    if (in.b_dec != nullptr)
      for (index_t i = 0; i < d_in; ++i) ur[i] = xr[i] - in.b_dec[i];
    else
      std::copy(xr, xr + d_in, ur);
  }
  // A bf16 dot-product tile takes u rounded to bf16, rows padded to an even length.
  std::vector<bf16> u16;
  const index_t ld16 = (d_in + 1) / 2 * 2;
  if (tile.bf16_fn != nullptr) {
    if (tile.bf16_begin != nullptr) tile.bf16_begin();
    u16.assign(size_t((r1 - r0) * ld16), bf16{0});
    for (index_t r = 0; r < r1 - r0; ++r)
      for (index_t i = 0; i < d_in; ++i) u16[size_t(r * ld16 + i)].bits = round_to_bf16(float(u[size_t(r * d_in + i)]));
  }
  alignas(64) T acc[kMaxTileRows * kMaxTileLanes];
  const index_t ld_acc = index_t(tile.panels) * kPanel;
  for (index_t p = p0; p < p1 && !interrupted(); p += tile.panels) {
    const int panels = int(std::min<index_t>(tile.panels, p1 - p));
    const W* panel = packed + p * panel_stride;
    for (index_t t0 = r0; t0 < r1; t0 += tile.rows) {
      const int rows = int(std::min<index_t>(tile.rows, r1 - t0));
      if (tile.bf16_fn != nullptr)
        tile.bf16_fn(u16.data() + (t0 - r0) * ld16, ld16, rows, panel, panel_stride, panels, d_in, acc, ld_acc);
      else
        tile.fn(u.data() + (t0 - r0) * d_in, d_in, rows, panel, panel_stride, panels, d_in, acc, ld_acc);
      for (int r = 0; r < rows; ++r) epilogue(t0 + r, p, panels, acc + r * ld_acc);
    }
  }
}

// Lanes of a tile row that are real latents (the last panel may run past d_sae).
inline int live_lanes(index_t first_latent, int panels, index_t d_sae) {
  return int(std::min<index_t>(index_t(panels) * kPanel, d_sae - first_latent));
}

}  // namespace

template <class T, class W>
void encode_topk(const EncodeInputs<T>& in, const W* packed, index_t k, T* values,
                 index_t* indices) {
  if (in.n == 0) return;
  const IsaKernels& kernels = active_kernels();
  const Tile<T, W> tile = tile_of<T, W>(kernels);
  const Screen<T> screen = screen_of<T>(kernels);
  const Plan plan = make_plan<T>(in.n, in.d_in, in.d_sae, tile.rows);
  const index_t cap = topk_capacity(k);
  const index_t d_sae = in.d_sae;

  // Candidate storage: one buffer of `cap` per (row, split). With one split a task finishes its
  // rows itself, so storage is per task; with several, all rows' buffers live until the merge
  // (only happens for small batches).
  std::vector<Cand<T>> shared;
  std::vector<index_t> shared_sizes;
  if (plan.splits > 1) {
    shared.resize(size_t(in.n * plan.splits * cap));
    shared_sizes.assign(size_t(in.n * plan.splits), 0);
  }

  parallel_for(plan.tasks(), [&](index_t task) {
    const index_t rb = task / plan.splits, s = task % plan.splits;
    const index_t r0 = rb * plan.row_block, r1 = std::min(in.n, r0 + plan.row_block);
    std::vector<Cand<T>> local;
    Cand<T>* base;
    index_t stride;  // distance between consecutive rows' buffers
    if (plan.splits > 1) {
      base = shared.data() + (r0 * plan.splits + s) * cap;
      stride = plan.splits * cap;
    } else {
      local.resize(size_t((r1 - r0) * cap));
      base = local.data();
      stride = cap;
    }
    std::vector<TopKBuffer<T>> bufs;
    bufs.reserve(size_t(r1 - r0));
    for (index_t r = r0; r < r1; ++r) bufs.emplace_back(base + (r - r0) * stride, k, cap);

    std::vector<T> u;
    run_task(in, packed, plan, task, tile, u, [&](index_t row, index_t p, int panels, T* acc) {
      TopKBuffer<T>& buf = bufs[size_t(row - r0)];
      if (buf.closed()) return;
      const index_t first = p * kPanel;
      // One SIMD compare against the row's k-th value so far; hits are rare once it has risen.
      for (uint64_t hits = screen.topk(acc, in.b_enc + first, live_lanes(first, panels, d_sae), buf.bar());
           hits != 0; hits &= hits - 1) {
        const int l = __builtin_ctzll(hits);
        buf.push(acc[l], first + l);
      }
    });

    if (plan.splits > 1) {
      for (index_t r = r0; r < r1; ++r) shared_sizes[size_t(r * plan.splits + s)] = bufs[size_t(r - r0)].size();
      return;
    }
    std::vector<Cand<T>> row;
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      const TopKBuffer<T>& b = bufs[size_t(r - r0)];
      row.assign(b.data(), b.data() + b.size());
      finish_topk_row(row, k, d_sae, values + r * k, indices + r * k);
    }
  });

  if (plan.splits > 1) {
    parallel_range(in.n, 1, [&](index_t r0, index_t r1) {
      std::vector<Cand<T>> row;
      for (index_t r = r0; r < r1 && !interrupted(); ++r) {
        row.clear();
        for (index_t s = 0; s < plan.splits; ++s) {
          const Cand<T>* b = shared.data() + (r * plan.splits + s) * cap;
          row.insert(row.end(), b, b + shared_sizes[size_t(r * plan.splits + s)]);
        }
        finish_topk_row(row, k, d_sae, values + r * k, indices + r * k);
      }
    });
  }
}

template <class T, class W>
void encode_groupmax(const EncodeInputs<T>& in, const W* packed, index_t k, T* values, index_t* indices) {
  if (in.n == 0) return;
  const IsaKernels& kernels = active_kernels();
  const Tile<T, W> tile = tile_of<T, W>(kernels);
  const Screen<T> screen = screen_of<T>(kernels);
  const Plan plan = make_plan<T>(in.n, in.d_in, in.d_sae, tile.rows);
  const index_t d_sae = in.d_sae, group = d_sae / k;
  // picks[(row * splits + split) * k + g]: each split's best of group g (value -1: none yet).
  std::vector<Cand<T>> picks(size_t(in.n * plan.splits * k), Cand<T>{T(-1), -1});
  parallel_for(plan.tasks(), [&](index_t task) {
    const index_t s = task % plan.splits;
    std::vector<T> u;
    run_task(in, packed, plan, task, tile, u, [&](index_t row, index_t p, int panels, T* acc) {
      Cand<T>* best = picks.data() + (row * plan.splits + s) * k;
      const index_t first = p * kPanel;
      const int lanes = live_lanes(first, panels, d_sae);
      screen.topk(acc, in.b_enc + first, lanes, std::numeric_limits<T>::infinity());  // adds the bias
      for (int l = 0; l < lanes; ++l) {
        const index_t f = first + l;
        const T v = relu(acc[l]);
        Cand<T>& b = best[f / group];
        if (better_pick(v, f, b.key, b.idx)) b = Cand<T>{v, f};
      }
    });
  });
  parallel_range(in.n, 64, [&](index_t r0, index_t r1) {
    std::vector<Cand<T>> row(static_cast<size_t>(k));
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      for (index_t g = 0; g < k; ++g) {
        Cand<T> b = picks[size_t((r * plan.splits) * k + g)];
        for (index_t s = 1; s < plan.splits; ++s) {
          const Cand<T>& c = picks[size_t((r * plan.splits + s) * k + g)];
          if (c.idx >= 0 && (b.idx < 0 || better_pick(c.key, c.idx, b.key, b.idx))) b = c;
        }
        row[size_t(g)] = b;
      }
      std::sort(row.begin(), row.end(), ranks_before<T>);
      for (index_t j = 0; j < k; ++j) {
        values[r * k + j] = row[size_t(j)].key;
        indices[r * k + j] = row[size_t(j)].idx;
      }
    }
  });
}

template <class T, class W>
ThresholdCodes<T> encode_threshold(const EncodeInputs<T>& in, const W* packed, bool compact_nonfinite) {
  ThresholdCodes<T> out;
  out.offsets.assign(size_t(in.n + 1), 0);
  if (in.n == 0) return out;
  const IsaKernels& kernels = active_kernels();
  const Tile<T, W> tile = tile_of<T, W>(kernels);
  const Screen<T> screen = screen_of<T>(kernels);
  const Plan plan = make_plan<T>(in.n, in.d_in, in.d_sae, tile.rows);
  const index_t d_sae = in.d_sae;
  // ReLU is JumpReLU with threshold 0.
  std::vector<T> zeros;
  const T* threshold = in.threshold;
  if (threshold == nullptr) {
    zeros.assign(size_t(d_sae), T(0));
    threshold = zeros.data();
  }

  // parts[row * splits + split]: that split's active latents of the row, in latent order. With
  // compact_nonfinite, bad[row * splits + split] marks a part cut to its first non-finite latent
  // (the split's lowest: latents arrive in order), after which the split ignores the row.
  const size_t n_parts = size_t(in.n * plan.splits);
  std::vector<std::vector<Cand<T>>> parts(n_parts);
  std::vector<char> bad(compact_nonfinite ? n_parts : 0, 0);
  parallel_for(plan.tasks(), [&](index_t task) {
    const index_t s = task % plan.splits;
    std::vector<T> u;
    run_task(in, packed, plan, task, tile, u, [&](index_t row, index_t p, int panels, T* acc) {
      const size_t part = size_t(row * plan.splits + s);
      if (compact_nonfinite && bad[part]) return;
      std::vector<Cand<T>>& list = parts[part];
      const index_t first = p * kPanel;
      // z = relu(pre) * (pre > thr) is non-zero; NaN stays NaN (and active), as in the dense formula.
      for (uint64_t hits = screen.threshold(acc, in.b_enc + first, threshold + first,
                                            live_lanes(first, panels, d_sae));
           hits != 0; hits &= hits - 1) {
        const int l = __builtin_ctzll(hits);
        if (compact_nonfinite && !std::isfinite(acc[l])) {
          list.assign(1, Cand<T>{acc[l], first + l});
          bad[part] = 1;
          return;
        }
        list.push_back(Cand<T>{acc[l], first + l});
      }
    });
  });

  if (interrupted()) return out;
  if (compact_nonfinite) {
    // A row with a non-finite part keeps that part's entry, from the first such split (splits
    // cover the latents in order), and nothing else.
    for (index_t r = 0; r < in.n; ++r)
      for (index_t s = 0; s < plan.splits; ++s)
        if (bad[size_t(r * plan.splits + s)]) {
          const Cand<T> keep = parts[size_t(r * plan.splits + s)][0];
          for (index_t o = 0; o < plan.splits; ++o) std::vector<Cand<T>>().swap(parts[size_t(r * plan.splits + o)]);
          parts[size_t(r * plan.splits)].assign(1, keep);
          break;
        }
  }
  for (index_t r = 0; r < in.n; ++r) {
    index_t count = 0;
    for (index_t s = 0; s < plan.splits; ++s) count += index_t(parts[size_t(r * plan.splits + s)].size());
    out.offsets[size_t(r + 1)] = out.offsets[size_t(r)] + count;
    out.max_count = std::max(out.max_count, count);
  }
  out.entries.resize(size_t(out.offsets.back()));
  parallel_range(in.n, 64, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      Cand<T>* dst = out.entries.data() + out.offsets[size_t(r)];
      Cand<T>* at = dst;
      for (index_t s = 0; s < plan.splits; ++s) {
        std::vector<Cand<T>>& part = parts[size_t(r * plan.splits + s)];
        at = std::copy(part.begin(), part.end(), at);
        std::vector<Cand<T>>().swap(part);
      }
      std::sort(dst, at, ranks_before<T>);
    }
  });
  return out;
}

template <class T>
template <class Out>
void ThresholdCodes<T>::write(index_t width, Out* values, index_t* indices, index_t* counts) const {
  const index_t n = index_t(offsets.size()) - 1;
  parallel_range(n, 256, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1 && !interrupted(); ++r) {
      const index_t begin = offsets[size_t(r)], count = offsets[size_t(r + 1)] - begin;
      const index_t kept = std::min(count, width);
      for (index_t j = 0; j < kept; ++j) {
        values[r * width + j] = Out(entries[size_t(begin + j)].key);
        indices[r * width + j] = entries[size_t(begin + j)].idx;
      }
      for (index_t j = kept; j < width; ++j) {
        values[r * width + j] = Out(0);
        indices[r * width + j] = -1;
      }
      counts[r] = kept;
    }
  });
}

#define SAE_INSTANTIATE_ENCODE(T, W)                                                             \
  template void encode_topk<T, W>(const EncodeInputs<T>&, const W*, index_t, T*, index_t*);    \
  template void encode_groupmax<T, W>(const EncodeInputs<T>&, const W*, index_t, T*, index_t*); \
  template ThresholdCodes<T> encode_threshold<T, W>(const EncodeInputs<T>&, const W*, bool);
SAE_INSTANTIATE_ENCODE(float, float)
SAE_INSTANTIATE_ENCODE(float, bf16)
SAE_INSTANTIATE_ENCODE(float, f16)
SAE_INSTANTIATE_ENCODE(double, double)
#undef SAE_INSTANTIATE_ENCODE

template void ThresholdCodes<float>::write<float>(index_t, float*, index_t*, index_t*) const;
template void ThresholdCodes<double>::write<double>(index_t, double*, index_t*, index_t*) const;

}  // namespace sae
