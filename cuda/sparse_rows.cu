// Gathers and scatters over code rows: decode (sum of weighted W_dec rows), and the two sparse
// pieces of the backward passes, sparse_dot (g against gathered rows) and sparse_outer (weighted
// rows of g scattered into a weight gradient, with atomics: not bitwise deterministic, like
// torch's index_add_ on CUDA). Indices outside [-1, rows) are skipped and reported.
#include <cstring>
#include <type_traits>

#include "launch_util.cuh"

namespace sae_cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kCodesPerRound = 128;  // codes of a row staged in shared memory at a time

// acc[e] += v * W[e] for the V consecutive weights at p (16-byte aligned when V > 1) or, for V = 1,
// the single weight at p.
template <class T, class W, int V> __device__ __forceinline__ void fma_weights(T (&acc)[V], T v, const W* p) {
  if constexpr (V == 1) {
    acc[0] += v * widen<T>(*p);
  } else if constexpr (std::is_same<W, float>::value) {
    static_assert(V == 4, "float rows load as float4");
    const float4 q = *reinterpret_cast<const float4*>(p);
    acc[0] += v * q.x; acc[1] += v * q.y; acc[2] += v * q.z; acc[3] += v * q.w;
  } else if constexpr (std::is_same<W, double>::value) {
    static_assert(V == 2, "double rows load as double2");
    const double2 q = *reinterpret_cast<const double2*>(p);
    acc[0] += v * q.x; acc[1] += v * q.y;
  } else {
    static_assert(V == 8, "16-bit rows load as 8 halves");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    W h[8];
    memcpy(h, &raw, sizeof raw);  // not a pointer cast: reading a uint4 through W* breaks aliasing rules
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] += v * widen<T>(h[e]);
  }
}

// One block per row; thread t owns column vectors t, t + blockDim, ... (V columns each).
// V > 1 needs unit column stride, 16-byte aligned rows and d_in % V == 0.
template <class T, class W, int V>
__global__ void __launch_bounds__(1024) decode_kernel(index_t k, const T* __restrict__ values, const int64_t* __restrict__ indices,
                              const W* __restrict__ w, index_t d_sae, index_t d_in, index_t rs, index_t cs,
                              const T* __restrict__ b_dec, T* __restrict__ out, unsigned long long* report) {
  __shared__ T sv[kCodesPerRound];
  __shared__ int64_t si[kCodesPerRound];
  const index_t row = blockIdx.x;
  const index_t nvec = (d_in + V - 1) / V;
  for (index_t base = 0; base < nvec; base += blockDim.x) {
    const index_t cv = base + threadIdx.x;
    const bool mine = cv < nvec;
    T acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = (mine && b_dec != nullptr) ? b_dec[cv * V + e] : T(0);
    for (index_t j0 = 0; j0 < k; j0 += kCodesPerRound) {
      __syncthreads();
      for (index_t j = threadIdx.x; j < kCodesPerRound && j0 + j < k; j += blockDim.x) {
        int64_t idx = indices[row * k + j0 + j];
        if (!index_ok(idx, d_sae, base == 0 ? report : nullptr)) idx = -1;  // report once per entry
        si[j] = idx;
        sv[j] = values[row * k + j0 + j];
      }
      __syncthreads();
      if (!mine) continue;
      const index_t round = min(index_t(kCodesPerRound), k - j0);
      for (index_t j = 0; j < round; ++j) {
        const int64_t idx = si[j];
        if (idx < 0) continue;
        fma_weights<T, W, V>(acc, sv[j], w + idx * rs + (V == 1 ? cv * cs : cv * V));
      }
    }
    if (mine) {
#pragma unroll
      for (int e = 0; e < V; ++e) out[row * d_in + cv * V + e] = acc[e];
    }
  }
}

// One warp per (row, code) pair.
template <class T, class W>
__global__ void __launch_bounds__(256) sparse_dot_kernel(index_t pairs, index_t k, const T* __restrict__ g,
                                  const int64_t* __restrict__ indices, const W* __restrict__ w, index_t rows,
                                  index_t d, index_t rs, index_t cs, T* __restrict__ out,
                                  unsigned long long* report) {
  const int lane = threadIdx.x % 32;
  const index_t warps = index_t(gridDim.x) * blockDim.x / 32;
  for (index_t p = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; p < pairs; p += warps) {
    const int64_t idx = indices[p];
    T acc = 0;
    if (index_ok(idx, rows, lane == 0 ? report : nullptr) && idx >= 0) {
      const T* gr = g + (p / k) * d;
      const W* wr = w + idx * rs;
      for (index_t c = lane; c < d; c += 32) acc += gr[c] * widen<T>(wr[c * cs]);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(kFull, acc, o);
    if (lane == 0) out[p] = acc;
  }
}

// One block per (row, code) pair: out[idx] += value * g[row] along the row (or column, by strides).
template <class T>
__global__ void __launch_bounds__(256) sparse_outer_kernel(index_t pairs, index_t k, const T* __restrict__ values,
                                    const int64_t* __restrict__ indices, const T* __restrict__ g, index_t d,
                                    T* __restrict__ out, index_t rows, index_t rs, index_t cs,
                                    unsigned long long* report) {
  for (index_t p = blockIdx.x; p < pairs; p += gridDim.x) {
    const int64_t idx = indices[p];
    if (!index_ok(idx, rows, threadIdx.x == 0 ? report : nullptr) || idx < 0) continue;
    const T v = values[p];
    const T* gr = g + (p / k) * d;
    for (index_t c = threadIdx.x; c < d; c += blockDim.x) atomicAdd(out + idx * rs + c * cs, v * gr[c]);
  }
}

template <class T, class W, int V>
void launch_decode(index_t n, index_t k, const void* values, const int64_t* indices, const void* w, index_t d_sae,
                   index_t d_in, index_t rs, index_t cs, const void* b_dec, void* out, unsigned long long* report,
                   cudaStream_t stream) {
  // One pass over the row when it fits in a block: a thread per V columns, whole warps, <= 1024.
  const index_t nvec = (d_in + V - 1) / V;
  const int threads = int(std::min<index_t>(1024, std::max<index_t>(32, (nvec + 31) / 32 * 32)));
  decode_kernel<T, W, V><<<blocks_for(n, 1, 0x7FFFFFFF), threads, 0, stream>>>(
      k, static_cast<const T*>(values), indices, static_cast<const W*>(w), d_sae, d_in, rs, cs,
      static_cast<const T*>(b_dec), static_cast<T*>(out), report);
  check_launch("decode");
}

template <class T, class W> void load_pair() {
  load_kernel(decode_kernel<T, W, 1>, "decode");
  load_kernel(decode_kernel<T, W, int(16 / sizeof(W))>, "decode");
  load_kernel(sparse_dot_kernel<T, W>, "sparse_dot");
}

}  // namespace

void load_sparse_row_kernels() {
  load_pair<float, float>();
  load_pair<float, __nv_bfloat16>();
  load_pair<float, __half>();
  load_pair<double, double>();
  load_kernel(sparse_outer_kernel<float>, "sparse_outer");
  load_kernel(sparse_outer_kernel<double>, "sparse_outer");
}

void decode(const Mat& values, const Mat& indices, const Mat& w, const void* bias, void* out,
            unsigned long long* report, void* stream) {
  const index_t n = values.rows, k = values.cols, d_sae = w.rows, d_in = w.cols;
  if (n <= 0 || d_in <= 0) return;
  const void* vals = reinterpret_cast<const void*>(values.data);
  const auto* idx = reinterpret_cast<const int64_t*>(indices.data);
  const void* wp = reinterpret_cast<const void*>(w.data);
  dispatch(values.dtype, w.dtype, "decode", [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    constexpr int V = int(16 / sizeof(W));
    const bool vec = w.col_stride == 1 && d_in % V == 0 && (w.row_stride * index_t(sizeof(W))) % 16 == 0 &&
                     w.data % 16 == 0;
    if (vec)
      launch_decode<T, W, V>(n, k, vals, idx, wp, d_sae, d_in, w.row_stride, w.col_stride, bias, out, report,
                             as_stream(stream));
    else
      launch_decode<T, W, 1>(n, k, vals, idx, wp, d_sae, d_in, w.row_stride, w.col_stride, bias, out, report,
                             as_stream(stream));
  });
}

void sparse_dot(const Mat& g, const Mat& indices, const Mat& w, void* out, unsigned long long* report,
                void* stream) {
  const index_t k = indices.cols, pairs = indices.rows * k;
  if (pairs <= 0) return;
  dispatch(g.dtype, w.dtype, "sparse_dot", [&](auto t, auto wt) {
    using T = decltype(t);
    using W = decltype(wt);
    sparse_dot_kernel<T, W><<<blocks_for(pairs, 8, 1 << 20), 256, 0, as_stream(stream)>>>(
        pairs, k, reinterpret_cast<const T*>(g.data), reinterpret_cast<const int64_t*>(indices.data),
        reinterpret_cast<const W*>(w.data), w.rows, w.cols, w.row_stride, w.col_stride, static_cast<T*>(out),
        report);
    check_launch("sparse_dot");
  });
}

void sparse_outer(const Mat& values, const Mat& indices, const Mat& g, const Mat& out, unsigned long long* report,
                  void* stream) {
  const index_t k = values.cols, pairs = values.rows * k, d = g.cols;
  if (pairs <= 0 || d <= 0) return;
  const int threads = int(std::min<index_t>(256, std::max<index_t>(32, (d + 31) / 32 * 32)));
  const unsigned blocks = blocks_for(pairs, 1, 1 << 20);
  const auto* idx = reinterpret_cast<const int64_t*>(indices.data);
  if (DType(values.dtype) == DType::f32)
    sparse_outer_kernel<float><<<blocks, threads, 0, as_stream(stream)>>>(
        pairs, k, reinterpret_cast<const float*>(values.data), idx, reinterpret_cast<const float*>(g.data), d,
        reinterpret_cast<float*>(out.data), out.rows, out.row_stride, out.col_stride, report);
  else if (DType(values.dtype) == DType::f64)
    sparse_outer_kernel<double><<<blocks, threads, 0, as_stream(stream)>>>(
        pairs, k, reinterpret_cast<const double*>(values.data), idx, reinterpret_cast<const double*>(g.data), d,
        reinterpret_cast<double*>(out.data), out.rows, out.row_stride, out.col_stride, report);
  else
    throw std::invalid_argument("sae_native._cuda.sparse_outer: values must be float32 or float64");
  check_launch("sparse_outer");
}

}  // namespace sae_cuda
