// Stands in for CUDA's cuda_runtime.h when tests/cuda_emu/build.py compiles cuda/*.cu with g++:
// the built-in variables, intrinsics and atomics the kernels use, and the few runtime calls the
// launchers make, on top of the CPU emulator (emu_runtime.h). CUDA's own headers still supply the
// types (vector_types.h, driver_types.h, cuda_bf16.h, cuda_fp16.h) and host_defines.h, which
// defines __global__, __device__ and __host__ as nothing for a host compiler.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <crt/host_defines.h>
// Before the macros below: these pull in CUDA headers that name parameters gridDim, blockDim.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu_runtime.h"

// Shared memory is per block; blocks run one at a time, so a static is exactly that.
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

// ---- device functions ---------------------------------------------------------------------------
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline void __syncthreads() { ::emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) {
  ::emu::warp_collective(::emu::Collective::syncwarp, mask, 0, 0);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(::emu::warp_collective(::emu::Collective::ballot, mask, pred != 0, 0));
}
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffled values are copied bitwise");
  if (width != 32) throw "emulator: only width 32 shuffles";
  return ::emu::from_bits<T>(::emu::warp_collective(::emu::Collective::shfl, mask, ::emu::to_bits(v), src));
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) throw "emulator: only width 32 shuffles";
  return ::emu::from_bits<T>(
      ::emu::warp_collective(::emu::Collective::shfl_down, mask, ::emu::to_bits(v), int(delta)));
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) throw "emulator: only width 32 shuffles";
  return ::emu::from_bits<T>(::emu::warp_collective(::emu::Collective::shfl_xor, mask, ::emu::to_bits(v), lane_mask));
}

// Fibers share one OS thread and never switch inside these: plain read-modify-writes are atomic.
template <class T> T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T> T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}
template <class T> T atomicMax(T* p, T v) {
  const T old = *p;
  if (old < v) *p = v;
  return old;
}

// ---- runtime API ----------------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() { return ::emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t err) { return ::emu::error_string(err); }
inline const char* cudaGetErrorName(cudaError_t err) { return err == cudaSuccess ? "cudaSuccess" : "cudaError"; }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = ::emu::sm_count(); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(::emu::smem_ceiling()); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = int(::emu::smem_per_sm()); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}
template <class Kernel> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, Kernel) {
  *attr = cudaFuncAttributes{};
  return cudaSuccess;
}
template <class Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int block_threads, size_t smem) {
  *blocks = ::emu::occupancy(block_threads, smem);
  return cudaSuccess;
}
template <class Kernel> cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}
