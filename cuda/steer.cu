// Steering (clamped reconstruction), DESIGN.md's formula: y = base + sum_f delta_f * W_dec[f], with
// delta_f from the clamp mode (set: c - z, scale: (c - 1) z, add: c; 0 where only_active and
// z <= 0). One block per row; the clamped features' W rows come gathered ([count, d], small) by
// gather_clamp, which, like every kernel here, never trusts the features: one outside [0, d_sae)
// is reported, gathered as zeros, and adds nothing (its z is 0).
//   steer_codes:     z_f is the row's code value for latent f (0 if absent); base is x
//                    (keep_error) or the decoded codes (written into y beforehand by decode).
//   steer_threshold: z_f = relu(pre_f) * (pre_f > threshold_f) from column f of W_enc alone,
//                    O(count * d) per row whatever d_sae is; base is x.
#include "launch_util.cuh"

namespace sae_cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kFeaturesPerRound = 1024;  // clamped features whose deltas sit in shared memory at once
constexpr int kThreads = 256;

template <class T> __device__ __forceinline__ T clamp_delta(T z, T c, int mode, bool only_active) {
  if (only_active && !(z > T(0))) return T(0);
  switch (mode) {
    case 0: return c - z;           // set
    case 1: return (c - T(1)) * z;  // scale
    case 2: return c;               // add
  }
  return T(0);
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
__global__ void gather_clamp_kernel(index_t d, index_t d_sae, const int64_t* __restrict__ features,
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
      delta[c] = feature_ok(features[c0 + c], d_sae) ? clamp_delta(zf, targets[c0 + c], mode, only_active) : T(0);
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
        delta[c] = ok ? clamp_delta(zf, targets[c0 + c], mode, only_active) : T(0);
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

void gather_clamp(int t_dtype, int w_dtype, index_t d, index_t d_sae, index_t count, const int64_t* features,
                  const void* w_enc, index_t enc_rs, index_t enc_cs, const void* b_enc, const void* threshold,
                  const void* w_dec, index_t dec_rs, index_t dec_cs, void* enc_cols, void* b_f, void* thr_f,
                  void* dec_rows, unsigned long long* report, void* stream) {
  if (count <= 0) return;
  dispatch(t_dtype, w_dtype, "gather_clamp", [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    gather_clamp_kernel<T, W><<<blocks_for(count, 1, 0x7FFFFFFF), kThreads, 0, as_stream(stream)>>>(
        d, d_sae, features, static_cast<const W*>(w_enc), enc_rs, enc_cs, static_cast<const T*>(b_enc),
        static_cast<const T*>(threshold), static_cast<const W*>(w_dec), dec_rs, dec_cs, static_cast<T*>(enc_cols),
        static_cast<T*>(b_f), static_cast<T*>(thr_f), static_cast<T*>(dec_rows), report);
    check_launch("gather_clamp");
  });
}

void steer_codes(int t_dtype, index_t n, index_t d, index_t k, const void* base, const void* values,
                 const int64_t* indices, index_t d_sae, index_t count, const int64_t* features, const void* targets,
                 const void* dec_rows, int mode, bool only_active, void* y, void* z, unsigned long long* report,
                 void* stream) {
  if (n <= 0) return;
  const unsigned blocks = blocks_for(n, 1, 0x7FFFFFFF);
  if (DType(t_dtype) == DType::f32)
    steer_codes_kernel<float><<<blocks, kThreads, 0, as_stream(stream)>>>(
        d, k, static_cast<const float*>(base), static_cast<const float*>(values), indices, d_sae, count, features,
        static_cast<const float*>(targets), static_cast<const float*>(dec_rows), mode, only_active,
        static_cast<float*>(y), static_cast<float*>(z), report);
  else if (DType(t_dtype) == DType::f64)
    steer_codes_kernel<double><<<blocks, kThreads, 0, as_stream(stream)>>>(
        d, k, static_cast<const double*>(base), static_cast<const double*>(values), indices, d_sae, count, features,
        static_cast<const double*>(targets), static_cast<const double*>(dec_rows), mode, only_active,
        static_cast<double*>(y), static_cast<double*>(z), report);
  else
    throw std::invalid_argument("sae_native._cuda.steer_codes: activations must be float32 or float64");
  check_launch("steer_codes");
}

void steer_threshold(int t_dtype, index_t n, index_t d, const void* x, const void* b_dec, index_t count,
                     const int64_t* features, index_t d_sae, const void* enc_cols, const void* b_enc_f, const void* threshold_f, const void* dec_rows,
                     const void* targets, int mode, bool only_active, void* y, void* z, void* stream) {
  if (n <= 0) return;
  const unsigned blocks = blocks_for(n, 1, 0x7FFFFFFF);
  if (DType(t_dtype) == DType::f32)
    steer_threshold_kernel<float><<<blocks, kThreads, 0, as_stream(stream)>>>(
        d, static_cast<const float*>(x), static_cast<const float*>(b_dec), count, features, d_sae,
        static_cast<const float*>(enc_cols), static_cast<const float*>(b_enc_f),
        static_cast<const float*>(threshold_f), static_cast<const float*>(dec_rows),
        static_cast<const float*>(targets), mode, only_active, static_cast<float*>(y), static_cast<float*>(z));
  else if (DType(t_dtype) == DType::f64)
    steer_threshold_kernel<double><<<blocks, kThreads, 0, as_stream(stream)>>>(
        d, static_cast<const double*>(x), static_cast<const double*>(b_dec), count, features, d_sae,
        static_cast<const double*>(enc_cols), static_cast<const double*>(b_enc_f),
        static_cast<const double*>(threshold_f), static_cast<const double*>(dec_rows),
        static_cast<const double*>(targets), mode, only_active, static_cast<double*>(y), static_cast<double*>(z));
  else
    throw std::invalid_argument("sae_native._cuda.steer_threshold: activations must be float32 or float64");
  check_launch("steer_threshold");
}

}  // namespace sae_cuda
