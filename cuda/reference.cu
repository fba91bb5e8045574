// Obviously-correct reference kernels, kept beside the fast ones for the tests: no tiling, no
// shared memory, one thread per output. Slow; only for small sizes.
//   ref_preact:           pre[r, j] = sum_i u[r, i] * W[i, j] + b_enc[j] (fp32), written dense
//   ref_select_topk:      per row, k passes each taking the best key below the previous one
//   ref_select_threshold: the same over the active latents, padded with (0, -1)
//   ref_decode:           out[r, c] = b_dec[c] + sum_j values[r, j] * W[indices[r, j], c]
#include "launch_util.cuh"
#include "reference.h"

namespace sae_cuda {
namespace {

template <class U>
__global__ void ref_preact_kernel(index_t n, index_t d_in, index_t d_sae, const U* u, const U* w, const float* b_enc,
                                  float* pre) {
  const index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * d_sae) return;
  const index_t r = e / d_sae, j = e % d_sae;
  float acc = 0.0f;
  for (index_t i = 0; i < d_in; ++i) acc = fmaf(to_float(u[r * d_in + i]), to_float(w[i * d_sae + j]), acc);
  pre[e] = acc + b_enc[j];
}

__device__ bool ref_active(float pre, const float* threshold, index_t j) {
  const float t = threshold != nullptr ? threshold[j] : 0.0f;
  return pre != pre || (pre > 0.0f && pre > t);
}

// The best key strictly below `below` among the row's (active) latents; 0 if none.
__device__ uint64_t ref_next_key(const float* pr, index_t d_sae, uint64_t below, const float* threshold,
                                 bool only_active) {
  uint64_t best = 0;
  for (index_t j = 0; j < d_sae; ++j) {
    if (only_active && !ref_active(pr[j], threshold, j)) continue;
    const uint64_t key = candidate_key(pr[j], uint32_t(j));
    if (key < below && key > best) best = key;
  }
  return best;
}

__global__ void ref_select_topk_kernel(index_t n, index_t d_sae, index_t k, const float* pre, float* values,
                                       int64_t* indices) {
  const index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  uint64_t below = ~uint64_t(0);
  index_t positive = 0;  // selected latents with relu(pre) > 0 or NaN come first, by value
  for (index_t s = 0; s < k; ++s) {
    below = ref_next_key(pre + r * d_sae, d_sae, below, nullptr, false);
    const float v = relu_keep_nan(candidate_value(below));
    values[r * k + s] = v;
    indices[r * k + s] = candidate_latent(below);
    positive += v != 0.0f;
  }
  // The rest all have value 0: latent order (insertion sort).
  int64_t* tail = indices + r * k + positive;
  for (index_t a = 1; a < k - positive; ++a)
    for (index_t b = a; b > 0 && tail[b - 1] > tail[b]; --b) {
      const int64_t t = tail[b];
      tail[b] = tail[b - 1];
      tail[b - 1] = t;
    }
}

__global__ void ref_select_threshold_kernel(index_t n, index_t d_sae, const float* pre, const float* threshold,
                                            index_t width, float* values, int64_t* indices, int64_t* counts) {
  const index_t r = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const float* pr = pre + r * d_sae;
  index_t count = 0;
  for (index_t j = 0; j < d_sae; ++j) count += ref_active(pr[j], threshold, j);
  counts[r] = count;
  uint64_t below = ~uint64_t(0);
  for (index_t s = 0; s < width; ++s) {
    if (s < count) below = ref_next_key(pr, d_sae, below, threshold, true);
    values[r * width + s] = s < count ? candidate_value(below) : 0.0f;
    indices[r * width + s] = s < count ? candidate_latent(below) : -1;
  }
}

template <class T, class W>
__global__ void ref_decode_kernel(index_t n, index_t k, const T* values, const int64_t* indices, const W* w,
                                  index_t d_sae, index_t d_in, index_t rs, index_t cs, const T* b_dec, T* out) {
  const index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n * d_in) return;
  const index_t r = e / d_in, c = e % d_in;
  T acc = b_dec != nullptr ? b_dec[c] : T(0);
  for (index_t j = 0; j < k; ++j) {
    const int64_t idx = indices[r * k + j];
    if (idx >= 0 && idx < d_sae) acc += values[r * k + j] * widen<T>(w[idx * rs + c * cs]);
  }
  out[e] = acc;
}

constexpr int kThreads = 128;

}  // namespace

void ref_preact(int w_dtype, index_t n, index_t d_in, index_t d_sae, const void* u, const void* w,
                const float* b_enc, float* pre, void* stream) {
  if (n * d_sae <= 0) return;
  const unsigned blocks = blocks_for(n * d_sae, kThreads, 0x7FFFFFFF);
  switch (DType(w_dtype)) {
    case DType::bf16:
      ref_preact_kernel<__nv_bfloat16><<<blocks, kThreads, 0, as_stream(stream)>>>(
          n, d_in, d_sae, static_cast<const __nv_bfloat16*>(u), static_cast<const __nv_bfloat16*>(w), b_enc, pre);
      break;
    case DType::f16:
      ref_preact_kernel<__half><<<blocks, kThreads, 0, as_stream(stream)>>>(
          n, d_in, d_sae, static_cast<const __half*>(u), static_cast<const __half*>(w), b_enc, pre);
      break;
    case DType::f32:
      ref_preact_kernel<float><<<blocks, kThreads, 0, as_stream(stream)>>>(
          n, d_in, d_sae, static_cast<const float*>(u), static_cast<const float*>(w), b_enc, pre);
      break;
    default:
      throw std::invalid_argument("sae_native._cuda_test.ref_preact: weights must be float32, bfloat16 or float16");
  }
  check_launch("ref_preact");
}

void ref_select_topk(index_t n, index_t d_sae, index_t k, const float* pre, float* values, int64_t* indices,
                     void* stream) {
  if (n <= 0) return;
  ref_select_topk_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(n, d_sae, k, pre, values,
                                                                                     indices);
  check_launch("ref_select_topk");
}

void ref_select_threshold(index_t n, index_t d_sae, const float* pre, const float* threshold, index_t width,
                          float* values, int64_t* indices, int64_t* counts, void* stream) {
  if (n <= 0) return;
  ref_select_threshold_kernel<<<blocks_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      n, d_sae, pre, threshold, width, values, indices, counts);
  check_launch("ref_select_threshold");
}

void ref_decode(int t_dtype, int w_dtype, index_t n, index_t k, const void* values, const int64_t* indices,
                const void* w, index_t d_sae, index_t d_in, index_t row_stride, index_t col_stride,
                const void* b_dec, void* out, void* stream) {
  if (n * d_in <= 0) return;
  const unsigned blocks = blocks_for(n * d_in, kThreads, 0x7FFFFFFF);
  auto launch = [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    ref_decode_kernel<T, W><<<blocks, kThreads, 0, as_stream(stream)>>>(
        n, k, static_cast<const T*>(values), indices, static_cast<const W*>(w), d_sae, d_in, row_stride, col_stride,
        static_cast<const T*>(b_dec), static_cast<T*>(out));
  };
  const DType t = DType(t_dtype), wd = DType(w_dtype);
  if (t == DType::f32 && wd == DType::f32) launch(float{}, float{});
  else if (t == DType::f32 && wd == DType::bf16) launch(float{}, __nv_bfloat16{});
  else if (t == DType::f32 && wd == DType::f16) launch(float{}, __half{});
  else if (t == DType::f64 && wd == DType::f64) launch(double{}, double{});
  else throw std::invalid_argument("sae_native._cuda_test.ref_decode: unsupported dtype pair");
  check_launch("ref_decode");
}

}  // namespace sae_cuda
