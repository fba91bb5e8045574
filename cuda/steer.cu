// Steering (clamped reconstruction), docs/design.md's formula: y = base + sum_f delta_f * W_dec[f],
// with delta_f = clamp_delta(z_f, c_f) (csrc/clamp.h, shared with the CPU kernels). One block per
// row; the clamped features' W rows come gathered ([count, d], small) by gather_clamp, which, like
// every kernel here, never trusts the features: one outside [0, d_sae) is reported, gathered as
// zeros, and adds nothing (its z is 0).
//   steer_codes:     z_f is the row's code value for latent f (0 if absent); base is x
//                    (keep_error) or the decoded codes (written into y beforehand by decode).
//   steer_threshold: z_f = relu(pre_f) * (pre_f > threshold_f) from column f of W_enc alone,
//                    O(count * d) per row whatever d_sae is; base is x.
#include "clamp.h"
#include "launch_util.cuh"

namespace sae_cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kFeaturesPerRound = 1024;  // clamped features whose deltas sit in shared memory at once
constexpr int kThreads = 256;

template <class T> __device__ __forceinline__ T delta_of(T z, T c, int mode, bool only_active) {
  return sae::clamp_delta(z, c, sae::ClampMode(mode), only_active);
}

// y[row] = (first round ? base[row] : y[row]) + sum over this round's features of delta * W row.
// Deltas of exactly 0 add nothing (so a 0 * inf in W cannot turn y into NaN), as on the CPU.
template <class T>
__device__ void add_deltas(index_t row, index_t d, const T* base, const T* rows, const T* delta, int round_count,
                           bool first, T* y) {
  for (index_t i = threadIdx.x; i < d; i += blockDim.x) {
    T acc = first ? base[row * d + i] : y[row * d + i];
    for (int c = 0; c < round_count; ++c) {
      const T dl = delta[c];
      if (dl != T(0)) acc += dl * rows[c * d + i];
    }
    y[row * d + i] = acc;
  }
}

__device__ __forceinline__ bool feature_ok(int64_t f, index_t d_sae) { return f >= 0 && f < d_sae; }

// One block per clamped feature: column f of W_enc (when given), b_enc[f], threshold[f] (when
// given) and row f of W_dec, widened to T; zeros for a feature outside [0, d_sae).
template <class T, class W>
__global__ void __launch_bounds__(kThreads) gather_clamp_kernel(index_t d, index_t d_sae, const int64_t* __restrict__ features,
                                    const W* __restrict__ w_enc, index_t enc_rs, index_t enc_cs,
                                    const T* __restrict__ b_enc, const T* __restrict__ threshold,
                                    const W* __restrict__ w_dec, index_t dec_rs, index_t dec_cs,
                                    T* __restrict__ enc_cols, T* __restrict__ b_f, T* __restrict__ thr_f,
                                    T* __restrict__ dec_rows, unsigned long long* report) {
  const index_t c = blockIdx.x;
  const int64_t f = features[c];
  const bool ok = feature_ok(f, d_sae);
  if (!ok && threadIdx.x == 0 && report != nullptr) {
    atomicAdd(&report[0], 1ull);
    report[1] = static_cast<unsigned long long>(f);
  }
  for (index_t i = threadIdx.x; i < d; i += blockDim.x) {
    dec_rows[c * d + i] = ok ? widen<T>(w_dec[f * dec_rs + i * dec_cs]) : T(0);
    if (enc_cols != nullptr) enc_cols[c * d + i] = ok ? widen<T>(w_enc[i * enc_rs + f * enc_cs]) : T(0);
  }
  if (threadIdx.x == 0) {
    if (b_f != nullptr) b_f[c] = ok ? b_enc[f] : T(0);
    if (thr_f != nullptr) thr_f[c] = ok && threshold != nullptr ? threshold[f] : T(0);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
steer_codes_kernel(index_t d, index_t k, const T* base, const T* __restrict__ values,
                   const int64_t* __restrict__ indices, index_t d_sae, index_t count,
                   const int64_t* __restrict__ features, const T* __restrict__ targets,
                   const T* __restrict__ dec_rows, int mode, bool only_active, T* y, T* __restrict__ z,
                   unsigned long long* report) {
  __shared__ T delta[kFeaturesPerRound];
  __shared__ int first_pos[kFeaturesPerRound];
  const index_t row = blockIdx.x;
  const T* vr = values + row * k;
  const int64_t* ir = indices + row * k;
  if (report != nullptr)
    for (index_t j = threadIdx.x; j < k; j += blockDim.x) index_ok(ir[j], d_sae, report);
  if (count == 0 && base != y) add_deltas<T>(row, d, base, dec_rows, delta, 0, true, y);
  for (index_t c0 = 0; c0 < count; c0 += kFeaturesPerRound) {
    const int cn = int(min(index_t(kFeaturesPerRound), count - c0));
    __syncthreads();
    for (int c = threadIdx.x; c < cn; c += blockDim.x) first_pos[c] = 0x7FFFFFFF;
    __syncthreads();
    // The first position holding each feature (a well-formed row holds it at most once).
    for (index_t p = threadIdx.x; p < k * cn; p += blockDim.x) {
      const index_t j = p % k;
      const int c = int(p / k);
      if (ir[j] == features[c0 + c]) atomicMin(&first_pos[c], int(j));
    }
    __syncthreads();
    for (int c = threadIdx.x; c < cn; c += blockDim.x) {
      const T zf = first_pos[c] == 0x7FFFFFFF ? T(0) : vr[first_pos[c]];
      z[row * count + c0 + c] = zf;
      delta[c] = feature_ok(features[c0 + c], d_sae) ? delta_of(zf, targets[c0 + c], mode, only_active) : T(0);
    }
    __syncthreads();
    add_deltas<T>(row, d, base, dec_rows + c0 * d, delta, cn, c0 == 0, y);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
steer_threshold_kernel(index_t d, const T* __restrict__ x, const T* __restrict__ b_dec, index_t count,
                       const int64_t* __restrict__ features, index_t d_sae,
                       const T* __restrict__ enc_cols, const T* __restrict__ b_enc_f,
                       const T* __restrict__ threshold_f, const T* __restrict__ dec_rows,
                       const T* __restrict__ targets, int mode, bool only_active, T* __restrict__ y,
                       T* __restrict__ z) {
  __shared__ T delta[kFeaturesPerRound];
  const index_t row = blockIdx.x;
  const T* xr = x + row * d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (count == 0) add_deltas<T>(row, d, x, dec_rows, delta, 0, true, y);
  for (index_t c0 = 0; c0 < count; c0 += kFeaturesPerRound) {
    const int cn = int(min(index_t(kFeaturesPerRound), count - c0));
    __syncthreads();
    for (int c = warp; c < cn; c += warps) {  // a warp per feature: pre_f = (x - b_dec) . W_enc[:, f]
      const T* we = enc_cols + (c0 + c) * d;
      T pre = 0;
      for (index_t i = lane; i < d; i += 32) pre += (b_dec != nullptr ? xr[i] - b_dec[i] : xr[i]) * we[i];
      for (int o = 16; o > 0; o >>= 1) pre += __shfl_down_sync(kFull, pre, o);
      if (lane == 0) {
        const bool ok = feature_ok(features[c0 + c], d_sae);
        pre += b_enc_f[c0 + c];
        const T t = threshold_f != nullptr ? threshold_f[c0 + c] : T(0);
        const T zf = !ok ? T(0) : pre != pre ? pre : ((pre > t && pre > T(0)) ? pre : T(0));  // NaN kept
        z[row * count + c0 + c] = zf;
        delta[c] = ok ? delta_of(zf, targets[c0 + c], mode, only_active) : T(0);
      }
    }
    __syncthreads();
    add_deltas<T>(row, d, x, dec_rows + c0 * d, delta, cn, c0 == 0, y);
  }
}

}  // namespace

void load_steer_kernels() {
  load_kernel(gather_clamp_kernel<float, float>, "gather_clamp");
  load_kernel(gather_clamp_kernel<float, __nv_bfloat16>, "gather_clamp");
  load_kernel(gather_clamp_kernel<float, __half>, "gather_clamp");
  load_kernel(gather_clamp_kernel<double, double>, "gather_clamp");
  load_kernel(steer_codes_kernel<float>, "steer_codes");
  load_kernel(steer_codes_kernel<double>, "steer_codes");
  load_kernel(steer_threshold_kernel<float>, "steer_threshold");
  load_kernel(steer_threshold_kernel<double>, "steer_threshold");
}

namespace {

// The gathered copies inside the caller's scratch: [count, d] W_dec rows, [count, d] W_enc columns,
// [count] b_enc entries, [count] thresholds.
template <class T> struct Gathered {
  T *dec_rows, *enc_cols, *b_f, *thr_f;
  Gathered(void* scratch, index_t count, index_t d) {
    dec_rows = static_cast<T*>(scratch);
    enc_cols = dec_rows + count * d;
    b_f = enc_cols + count * d;
    thr_f = b_f + count;
  }
};

template <class T, class W>
void gather(const Mat* w_enc, const void* b_enc, const void* threshold, const Mat& w_dec, const ClampArgs& clamp,
            const Gathered<T>& g, unsigned long long* report, cudaStream_t stream) {
  if (clamp.count <= 0) return;
  const index_t d = w_dec.cols;
  gather_clamp_kernel<T, W><<<blocks_for(clamp.count, 1, 0x7FFFFFFF), kThreads, 0, stream>>>(
      d, w_dec.rows, reinterpret_cast<const int64_t*>(clamp.features),
      w_enc ? reinterpret_cast<const W*>(w_enc->data) : nullptr, w_enc ? w_enc->row_stride : 0,
      w_enc ? w_enc->col_stride : 0, static_cast<const T*>(b_enc), static_cast<const T*>(threshold),
      reinterpret_cast<const W*>(w_dec.data), w_dec.row_stride, w_dec.col_stride, w_enc ? g.enc_cols : nullptr,
      b_enc ? g.b_f : nullptr, threshold ? g.thr_f : nullptr, g.dec_rows, report);
  check_launch("gather_clamp");
}

}  // namespace

index_t steer_scratch_elements(index_t count, index_t d) { return 2 * count * d + 2 * count; }

void steer_threshold(const Mat& x, const Mat& w_enc, const void* b_enc, const void* threshold, const void* b_dec,
                     const Mat& w_dec, const ClampArgs& clamp, void* y, void* z, void* scratch,
                     unsigned long long* feature_report, void* stream) {
  const index_t n = x.rows, d = x.cols, count = clamp.count;
  dispatch(x.dtype, w_dec.dtype, "steer_threshold", [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    const Gathered<T> g(scratch, count, d);
    gather<T, W>(&w_enc, b_enc, threshold, w_dec, clamp, g, feature_report, as_stream(stream));
    if (n <= 0) return;
    steer_threshold_kernel<T><<<blocks_for(n, 1, 0x7FFFFFFF), kThreads, 0, as_stream(stream)>>>(
        d, reinterpret_cast<const T*>(x.data), static_cast<const T*>(b_dec), count,
        reinterpret_cast<const int64_t*>(clamp.features), w_dec.rows, g.enc_cols, g.b_f,
        threshold ? g.thr_f : nullptr, g.dec_rows, reinterpret_cast<const T*>(clamp.targets), clamp.mode,
        clamp.only_active, static_cast<T*>(y), static_cast<T*>(z));
    check_launch("steer_threshold");
  });
}

void steer_codes(const Mat& x, const Mat& values, const Mat& indices, const Mat& w_dec, const void* b_dec,
                 bool keep_error, const ClampArgs& clamp, void* y, void* z, void* scratch, unsigned long long* report,
                 unsigned long long* feature_report, void* stream) {
  const index_t n = x.rows, d = x.cols, count = clamp.count;
  if (!keep_error) decode(values, indices, w_dec, b_dec, y, report, stream);   // y starts as the codes' decode
  dispatch(x.dtype, w_dec.dtype, "steer_codes", [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    const Gathered<T> g(scratch, count, d);
    gather<T, W>(nullptr, nullptr, nullptr, w_dec, clamp, g, feature_report, as_stream(stream));
    if (n <= 0) return;
    steer_codes_kernel<T><<<blocks_for(n, 1, 0x7FFFFFFF), kThreads, 0, as_stream(stream)>>>(
        d, values.cols, keep_error ? reinterpret_cast<const T*>(x.data) : static_cast<const T*>(y),
        reinterpret_cast<const T*>(values.data), reinterpret_cast<const int64_t*>(indices.data), w_dec.rows, count,
        reinterpret_cast<const int64_t*>(clamp.features), reinterpret_cast<const T*>(clamp.targets), g.dec_rows,
        clamp.mode, clamp.only_active, static_cast<T*>(y), static_cast<T*>(z), keep_error ? report : nullptr);
    check_launch("steer_codes");
  });
}

}  // namespace sae_cuda
