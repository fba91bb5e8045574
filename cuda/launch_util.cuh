// Host helpers shared by the launchers: the stream, launch-error checks, large shared memory.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.cuh"
#include "launch.h"

namespace sae_cuda {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Throws for a failed call. The runtime also keeps that error as its "last error"; it is read (and
// so cleared) here, or the next launch's check would report it again.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();
  throw std::runtime_error(std::string("sae_native._cuda: ") + what + ": " + cudaGetErrorString(err));
}

// After a launch: a bad configuration or a sticky earlier error surfaces here, not later.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Kernels asking for over 48 KiB of dynamic shared memory must say so (per device, so every time).
template <class Kernel> void allow_smem(Kernel kernel, size_t bytes, const char* name) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), name);
}

// Calls f(T{}, W{}) for the supported (activation, weight) dtype pairs, as the CPU module does.
template <class F> void dispatch(int t_dtype, int w_dtype, const char* op, F&& f) {
  const DType t = DType(t_dtype), wd = DType(w_dtype);
  if (t == DType::f32 && wd == DType::f32) return f(float{}, float{});
  if (t == DType::f32 && wd == DType::bf16) return f(float{}, __nv_bfloat16{});
  if (t == DType::f32 && wd == DType::f16) return f(float{}, __half{});
  if (t == DType::f64 && wd == DType::f64) return f(double{}, double{});
  throw std::invalid_argument(std::string("sae_native._cuda.") + op + ": unsupported dtype pair");
}

// Loads a kernel now (see load_kernels in launch.h): asking for its attributes does.
template <class Kernel> void load_kernel(Kernel kernel, const char* name) {
  cudaFuncAttributes attr;
  check_cuda(cudaFuncGetAttributes(&attr, kernel), name);
}

// Resident CTAs per multiprocessor of `kernel` with `threads` and `smem` bytes of dynamic shared
// memory; 0 when smem is over the device's per-block opt-in limit.
template <class Kernel> int blocks_per_sm(Kernel kernel, int threads, size_t smem, const char* name) {
  int dev = 0, optin = 0, blocks = 0;
  check_cuda(cudaGetDevice(&dev), name);
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), name);
  if (smem > size_t(optin)) return 0;
  allow_smem(kernel, smem, name);
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem), name);
  return blocks;
}

inline unsigned blocks_for(index_t items, index_t per_block, index_t cap = 1 << 30) {
  const index_t b = (items + per_block - 1) / per_block;
  return unsigned(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace sae_cuda
