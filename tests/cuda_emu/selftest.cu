// Small kernels that check the emulator itself (tests/test_cuda_emulated.py): the collectives'
// results, and that the bugs it claims to expose do show: divergent collectives, a missing
// barrier, a cp.async read before its wait, copies left pending, shared-memory over the limits.
// Compiled only into the emulated module, through the same rewrite as the real kernels.
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

__global__ void ballot_kernel(int64_t* out) {
  const int lane = threadIdx.x % 32;
  out[threadIdx.x] = __ballot_sync(kFull, lane % 3 == 0);
}

__global__ void shuffle_kernel(int64_t* out) {
  const int lane = threadIdx.x % 32;
  int sum = lane;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_down_sync(kFull, sum, o);
  const int from_next = __shfl_sync(kFull, lane * 10, (lane + 1) % 32);
  const int xored = __shfl_xor_sync(kFull, lane, 1);
  out[3 * threadIdx.x] = sum;  // lane 0: 0 + 1 + ... + 31 = 496
  out[3 * threadIdx.x + 1] = from_next;
  out[3 * threadIdx.x + 2] = xored;
}

__global__ void divergent_ballot_kernel(int64_t* out) {
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = __ballot_sync(kFull, 1);  // half the mask never arrives
}

__global__ void collective_vs_barrier_kernel(int64_t* out) {
  if (threadIdx.x < 16) __syncwarp();
  else __syncthreads();
  out[threadIdx.x] = 1;
}

// Thread 0 writes, everyone reads: correct only with the barrier.
__global__ void publish_kernel(int64_t* out, bool barrier) {
  extern __shared__ __align__(16) unsigned char smem[];
  int* s = reinterpret_cast<int*>(smem);
  if (threadIdx.x == 0) *s = 42;
  if (barrier) __syncthreads();
  out[threadIdx.x] = *s;
}

// One 16-byte cp.async of in[0..3]: what shared memory holds before the wait, and after it.
__global__ void cp_async_kernel(const int* in, int64_t* out, bool wait) {
  extern __shared__ __align__(16) unsigned char smem[];
  int* s = reinterpret_cast<int*>(smem);
  if (threadIdx.x == 0) {
    ::emu::cp_async16(s, in, true);
    ::emu::cp_async_commit();
    out[0] = s[0];
    if (wait) {
      ::emu::cp_async_wait(0);
      out[1] = s[0];
    }
  }
}

__global__ void big_smem_kernel(int64_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  smem[threadIdx.x] = 7;
  __syncthreads();
  out[threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
}

// Thread t copies in[t + 1]: the last thread reads one element past the buffer (AddressSanitizer).
__global__ void read_past_end_kernel(const int* in, int64_t* out) { out[threadIdx.x] = in[threadIdx.x + 1]; }

// One warp: D = A B for A[i][k] = i + 2k, B[k][j] = k - j (small integers: exact in half and fp32),
// stored row-major at `offset` floats into shared memory; out = D row-major (the test knows D).
__global__ void wmma_kernel(int64_t* out, int offset) {
  extern __shared__ __align__(128) unsigned char smem[];
  __half* a = reinterpret_cast<__half*>(smem);
  __half* b = a + 256;
  float* d = reinterpret_cast<float*>(b + 256) + offset;
  for (int e = threadIdx.x; e < 256; e += 32) {
    a[e] = __float2half(float(e / 16 + 2 * (e % 16)));
    b[e] = __float2half(float(e / 16 - e % 16));
  }
  __syncwarp();
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half, nvcuda::wmma::row_major> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> fc;
  nvcuda::wmma::fill_fragment(fc, 0.0f);
  nvcuda::wmma::load_matrix_sync(fa, a, 16);
  nvcuda::wmma::load_matrix_sync(fb, b, 16);
  nvcuda::wmma::mma_sync(fc, fa, fb, fc);
  nvcuda::wmma::store_matrix_sync(d, fc, 16, nvcuda::wmma::mem_row_major);
  __syncwarp();
  for (int e = threadIdx.x; e < 256; e += 32) out[e] = int64_t(d[e]);
}

void check(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

// Runs one self-test kernel with 64 threads and returns what it wrote (int64 per slot).
std::vector<int64_t> emu_selftest(const std::string& name, size_t smem_bytes, bool set_limit) {
  std::vector<int64_t> out(256, -7);
  static const int in[4] = {11, 12, 13, 14};
  alignas(16) static int aligned_in[4];
  std::copy(in, in + 4, aligned_in);
  if (name == "ballot") ballot_kernel<<<1, 64>>>(out.data());
  else if (name == "shuffle") shuffle_kernel<<<1, 64>>>(out.data());
  else if (name == "divergent_ballot") divergent_ballot_kernel<<<1, 64>>>(out.data());
  else if (name == "collective_vs_barrier") collective_vs_barrier_kernel<<<1, 64>>>(out.data());
  else if (name == "publish") publish_kernel<<<1, 64, 16>>>(out.data(), false);
  else if (name == "publish_barrier") publish_kernel<<<1, 64, 16>>>(out.data(), true);
  else if (name == "cp_async") cp_async_kernel<<<1, 64, 16>>>(aligned_in, out.data(), true);
  else if (name == "cp_async_no_wait") cp_async_kernel<<<1, 64, 16>>>(aligned_in, out.data(), false);
  else if (name == "wmma") wmma_kernel<<<1, 32, 4096>>>(out.data(), 0);
  else if (name == "wmma_misaligned") wmma_kernel<<<1, 32, 4096>>>(out.data(), 4);  // 16 bytes off
  else if (name == "read_past_end") {
    std::vector<int> in(64, 3);
    read_past_end_kernel<<<1, 64>>>(in.data(), out.data());
  } else if (name == "big_smem") {
    if (set_limit) {
      const cudaError_t err =
          cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
      if (err != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error(std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(err));
      }
    }
    big_smem_kernel<<<1, 64, smem_bytes>>>(out.data());
  } else {
    throw std::invalid_argument("no self-test named " + name);
  }
  check(name.c_str());
  return out;
}
