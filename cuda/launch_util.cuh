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

inline unsigned blocks_for(index_t items, index_t per_block, index_t cap = 1 << 30) {
  const index_t b = (items + per_block - 1) / per_block;
  return unsigned(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace sae_cuda
