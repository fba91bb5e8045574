// The device and its runtime, as the planner and build_info see them: driver and runtime versions
// (the module links CUDA's runtime statically, so the driver must be new enough for it), the
// device's multiprocessors and shared-memory limits, and loading every kernel up front.
#include <cuda_runtime.h>

#include <string>

#include "launch.h"
#include "launch_util.cuh"

namespace sae_cuda {

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  const cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // an answer here, not a failure to report at the next launch
  }
  return info;
}

DeviceLimits device_limits() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  DeviceLimits d;
  check_cuda(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, dev), "sm count");
  check_cuda(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "smem opt-in");
  check_cuda(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev), "smem per SM");
  check_cuda(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev), "compute capability");
  check_cuda(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, dev), "compute capability");
  return d;
}

void load_kernels() {
  load_encode_kernels();
  load_sort_kernels();
  load_sparse_row_kernels();
  load_steer_kernels();
}

}  // namespace sae_cuda
