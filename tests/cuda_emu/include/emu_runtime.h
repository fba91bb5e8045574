// A CPU emulator of the CUDA execution model, for running cuda/*.cu on a machine without a GPU
// (tests/cuda_emu/build.py compiles the kernels against it with g++; tests/test_cuda_emulated.py
// runs them). It is a test device, not a fast one:
//
// - Each block runs as one fiber per thread (ucontext) on the calling OS thread, blocks one after
//   another. A fiber runs until it reaches a synchronisation point: __syncthreads, or a warp
//   collective (__syncwarp, __ballot_sync, __shfl*_sync, the wmma *_sync calls). So every
//   schedule it produces is one that independent thread scheduling allows, and code that relies on
//   lanes moving in lockstep without a sync shows up as wrong results. Warps either move in step
//   or run one at a time as far as the block barriers let them (set_warp_greedy), so a warp that
//   overwrites shared memory others still read without a barrier between shows too.
// - Collectives are checked: every lane of the mask must reach the same collective; a lane that
//   exited, or waits at __syncthreads instead, is reported as a divergence error (the launch
//   fails, cudaGetLastError returns it). The order in which fibers resume can be shuffled (seed).
// - cp.async copies land at cp.async.wait_group, the latest moment the PTX allows, so a read of a
//   stage before its wait sees stale shared memory; or, when set, also at issue, the earliest, so
//   a stage refilled while other warps still read it shows. Dynamic shared memory starts as 0xFF
//   bytes (NaN floats, huge keys) in every block.
// - Launches check the configuration as the hardware would: block size, grid limits, dynamic
//   shared memory over 48 KiB only after cudaFuncSetAttribute, and a per-device ceiling.
// - Streams are ignored: a launch runs to completion before it returns.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

#include <driver_types.h>
#include <vector_types.h>

namespace emu {

enum class Collective : int { syncwarp, ballot, shfl, shfl_down, shfl_xor, wmma };

struct ThreadState;

// The fiber now running: its thread index; the block's index, sizes and dynamic shared memory.
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
unsigned char* dynamic_smem();

void sync_threads();
// Waits until every lane of `mask` has arrived with the same collective; returns the result.
uint64_t warp_collective(Collective op, unsigned mask, uint64_t value, int arg);

// cp.async: a 16-byte copy (or zero fill) deferred to the wait that covers its group.
void cp_async16(void* smem, const void* gmem, bool pred);
void cp_async_commit();
void cp_async_wait(int pending_groups);

// Runs body() for every thread of every block; returns cudaSuccess or the error it failed with
// (also kept for cudaGetLastError).
cudaError_t run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

cudaError_t take_last_error();
const char* error_string(cudaError_t err);
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);

// Test controls (exposed by the emulated module): the order fibers resume in (0 = thread order),
// and the device's shared-memory ceiling per block (bytes).
void set_schedule_seed(uint64_t seed);
void set_copies_at_issue(bool at_issue);
void set_warp_greedy(bool greedy);
void set_smem_ceiling(size_t bytes);
// The device's multiprocessors and shared memory per multiprocessor (default: an H100 / H200's).
void set_device(int sm_count, size_t smem_per_sm);
int sm_count();
size_t smem_ceiling();
size_t smem_per_sm();
// Resident blocks per multiprocessor for a kernel of this block size and dynamic shared memory.
int occupancy(int block_threads, size_t smem);
void reset_kernel_attributes();
uint64_t launches();

template <class T> uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T> T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// kernel<<<grid, block, smem, stream>>>(args...) becomes launch(kernel, grid, block, smem, stream)(args...)
// (build.py rewrites the sources).
template <class... P> struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <class... A> void operator()(A&&... args) const {
    run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem, [&] { kernel(args...); });
  }
};
template <class... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Launch<P...>{kernel, grid, block, smem};
}

}  // namespace emu
