// The emulator's scheduler (see include/emu_runtime.h for what it models and checks).
#include "emu_runtime.h"
#include "fiber.h"

#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kDefaultSmemCeiling = 227 * 1024;  // H100: 227 KiB of dynamic shared memory per block

enum class Wait { running, block_barrier, collective, done };

struct Copy {
  void* dst;
  const void* src;
  bool pred;
  bool landed;  // written at issue already (set_copies_at_issue)
};

struct ThreadFiber {
  Context ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid;
  Wait wait = Wait::running;
  Collective op = Collective::syncwarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0;
  std::vector<Copy> open;                  // cp.async issued since the last commit
  std::deque<std::vector<Copy>> groups;    // committed, not yet waited for
  void* asan_fake = nullptr;               // the fiber's fake stack while it is switched out
};

// The block being run on this OS thread.
struct BlockRun {
  std::vector<ThreadFiber> fibers;
  Context scheduler;
  ThreadFiber* current = nullptr;
  uint3 bid;
  dim3 bdim, gdim;
  // Dynamic shared memory: 128-byte aligned like the hardware's, sized to the launch (rounded up
  // to 128 bytes) so that AddressSanitizer sees an access past it.
  std::unique_ptr<unsigned char, decltype(&std::free)> smem{nullptr, &std::free};
  size_t smem_bytes = 0;
  const std::function<void()>* body = nullptr;
  std::string failure;  // set by a fiber that threw
  const void* sched_bottom = nullptr;  // the scheduler's stack (learnt on the first switch, for ASan)
  size_t sched_size = 0;
};

thread_local BlockRun* g_run = nullptr;
thread_local cudaError_t g_last = cudaSuccess;
thread_local std::string g_message;
std::map<const void*, int> g_max_smem;
std::mutex g_launch_mutex;  // one launch at a time (the module releases the GIL)
uint64_t g_seed = 0;
bool g_copies_at_issue = false;
bool g_warp_greedy = false;
size_t g_ceiling = kDefaultSmemCeiling;
int g_sm_count = 132;                      // an H100 / H200
size_t g_smem_per_sm = 228 * 1024;
uint64_t g_launches = 0;

constexpr cudaError_t kDivergence = cudaErrorLaunchFailure;

BlockRun& run() {
  if (g_run == nullptr) throw std::logic_error("emulator: device code called outside a launch");
  return *g_run;
}

void suspend(Wait w) {
  BlockRun& r = run();
  ThreadFiber* f = r.current;
  f->wait = w;
  asan_start_switch(&f->asan_fake, r.sched_bottom, r.sched_size);
  switch_context(f->ctx, r.scheduler);
  asan_finish_switch(f->asan_fake, &r.sched_bottom, &r.sched_size);
}

void land(const Copy& c) {
  if (c.landed) return;
  if (c.pred) std::memcpy(c.dst, c.src, 16);
  else std::memset(c.dst, 0, 16);
}

void fiber_entry() {
  BlockRun& r = *g_run;
  asan_finish_switch(nullptr, &r.sched_bottom, &r.sched_size);
  try {
    (*r.body)();
    if (!r.current->open.empty() || !r.current->groups.empty())
      throw std::runtime_error("cp.async copies still pending when the thread exited");
  } catch (const std::exception& e) {
    if (r.failure.empty()) r.failure = e.what();
  } catch (const char* e) {
    if (r.failure.empty()) r.failure = e;
  }
  r.current->wait = Wait::done;
  asan_start_switch(nullptr, r.sched_bottom, r.sched_size);  // this stack is done with
  switch_context(r.current->ctx, r.scheduler);
}

std::string describe(const BlockRun& r, const std::string& what) {
  std::ostringstream s;
  s << "emulator: " << what << " in block (" << r.bid.x << "," << r.bid.y << "," << r.bid.z << "): ";
  const char* names[] = {"running", "__syncthreads", "warp collective", "exited"};
  int shown = 0;
  for (size_t i = 0; i < r.fibers.size() && shown < 8; ++i) {
    const ThreadFiber& f = r.fibers[i];
    if (f.wait == Wait::done) continue;
    s << "thread " << i << " at " << names[int(f.wait)];
    if (f.wait == Wait::collective) s << " (op " << int(f.op) << ", mask " << std::hex << f.mask << std::dec << ")";
    s << "; ";
    ++shown;
  }
  return s.str();
}

// Completes the collective that lane `leader` of warp `w` waits at, if every lane of its mask is there.
// Returns false if some lane is not there yet; throws if one never can be (exited, at __syncthreads,
// or at another collective).
bool try_collective(BlockRun& r, size_t w, size_t leader, bool stalled) {
  ThreadFiber& lf = r.fibers[leader];
  const size_t base = w * 32;
  ThreadFiber* lanes[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!(lf.mask >> l & 1u)) continue;
    if (base + l >= r.fibers.size()) throw std::runtime_error(describe(r, "collective mask names a lane past the block"));
    ThreadFiber& f = r.fibers[base + l];
    const bool here = f.wait == Wait::collective && f.op == lf.op && f.mask == lf.mask;
    if (!here) {
      if (!stalled) return false;
      throw std::runtime_error(describe(r, "divergent warp collective (a lane of the mask never arrives)"));
    }
    lanes[l] = &f;
  }
  for (int l = 0; l < 32; ++l) {
    ThreadFiber* f = lanes[l];
    if (f == nullptr) continue;
    uint64_t res = 0;
    switch (f->op) {
      case Collective::syncwarp:
      case Collective::wmma: break;
      case Collective::ballot:
        for (int m = 0; m < 32; ++m)
          if (lanes[m] != nullptr && lanes[m]->value != 0) res |= uint64_t(1) << m;
        break;
      case Collective::shfl:
      case Collective::shfl_down:
      case Collective::shfl_xor: {
        int src = f->op == Collective::shfl ? f->arg : f->op == Collective::shfl_down ? l + f->arg : (l ^ f->arg);
        if (f->op == Collective::shfl) src &= 31;
        if (src >= 32) src = l;  // shfl_down past the warp: the lane keeps its own value
        if (lanes[src] == nullptr) throw std::runtime_error(describe(r, "shuffle from a lane outside the mask"));
        res = lanes[src]->value;
        break;
      }
    }
    f->result = res;
  }
  for (ThreadFiber* f : lanes)
    if (f != nullptr) f->wait = Wait::running;
  return true;
}

void resume(BlockRun& r, ThreadFiber& f) {
  r.current = &f;
  void* fake = nullptr;
  asan_start_switch(&fake, f.stack.get(), kStackBytes);
  switch_context(r.scheduler, f.ctx);
  asan_finish_switch(fake, nullptr, nullptr);
  if (!r.failure.empty()) throw std::runtime_error("emulator: kernel failed: " + r.failure);
}

// Completes every collective of warp w whose lanes have all arrived; true if any was.
bool resolve_warp(BlockRun& r, size_t w) {
  bool progressed = false;
  for (size_t i = w * 32; i < std::min(r.fibers.size(), w * 32 + 32); ++i)
    if (r.fibers[i].wait == Wait::collective && try_collective(r, w, i, false)) progressed = true;
  return progressed;
}

// Two policies decide who runs between block barriers:
//   round robin: every thread advances to its next sync point, then the collectives complete:
//                warps move in step;
//   warp-greedy: one warp runs (collectives and all) until it reaches the block barrier or exits,
//                then the next: a warp gets as far ahead of the others as the barriers allow.
// The seed (non-zero) shuffles the order of threads (round robin) or warps (greedy).
void run_block(BlockRun& r, std::mt19937_64& rng) {
  const size_t threads = r.fibers.size(), warps = (threads + 31) / 32;
  for (ThreadFiber& f : r.fibers) {
    asan_unpoison(f.stack.get(), kStackBytes);  // frames the previous block left behind
    make_context(f.ctx, f.stack.get(), kStackBytes, fiber_entry);
    f.wait = Wait::running;
    f.open.clear();
    f.groups.clear();
  }
  std::vector<size_t> order(g_warp_greedy ? warps : threads);
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (;;) {
    if (g_seed != 0) std::shuffle(order.begin(), order.end(), rng);
    bool progressed = false;
    if (g_warp_greedy) {
      for (size_t w : order) {
        do {
          for (size_t i = w * 32; i < std::min(threads, w * 32 + 32); ++i)
            if (r.fibers[i].wait == Wait::running) resume(r, r.fibers[i]);
        } while (resolve_warp(r, w));
      }
    } else {
      for (size_t i : order)
        if (r.fibers[i].wait == Wait::running) resume(r, r.fibers[i]);
      for (size_t w = 0; w < warps; ++w) progressed = resolve_warp(r, w) || progressed;
      if (progressed) continue;
    }
    // No collective can complete now: the block barrier, or the end, or a deadlock.
    bool any_alive = false, all_at_barrier = true;
    for (const ThreadFiber& f : r.fibers) {
      if (f.wait != Wait::done) any_alive = true;
      if (f.wait == Wait::collective || f.wait == Wait::running) all_at_barrier = false;
    }
    if (!any_alive) return;
    if (all_at_barrier) {  // exited threads count as arrived, as on the hardware
      for (ThreadFiber& f : r.fibers)
        if (f.wait == Wait::block_barrier) f.wait = Wait::running;
      continue;
    }
    for (size_t i = 0; i < threads; ++i)
      if (r.fibers[i].wait == Wait::collective) try_collective(r, i / 32, i, true);  // throws
    throw std::runtime_error(describe(r, "deadlock"));
  }
}

cudaError_t fail(cudaError_t err, const std::string& message) {
  g_last = err;
  g_message = message;
  return err;
}

}  // namespace

const uint3& thread_idx() { return run().current->tid; }
const uint3& block_idx() { return run().bid; }
const dim3& block_dim() { return run().bdim; }
const dim3& grid_dim() { return run().gdim; }
unsigned char* dynamic_smem() { return run().smem.get(); }

void sync_threads() { suspend(Wait::block_barrier); }

uint64_t warp_collective(Collective op, unsigned mask, uint64_t value, int arg) {
  ThreadFiber* f = run().current;
  const unsigned lane = f->tid.x % 32;  // blocks here are one-dimensional
  if (!(mask >> lane & 1u)) throw std::runtime_error("emulator: a lane called a collective outside its own mask");
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  suspend(Wait::collective);
  return f->result;
}

void cp_async16(void* smem, const void* gmem, bool pred) {
  BlockRun& r = run();
  const auto* s = static_cast<const unsigned char*>(smem);
  if (s < r.smem.get() || s + 16 > r.smem.get() + r.smem_bytes)
    throw std::runtime_error("emulator: cp.async destination outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 || (pred && reinterpret_cast<uintptr_t>(gmem) % 16 != 0))
    throw std::runtime_error("emulator: cp.async of 16 bytes needs 16-byte aligned addresses");
  Copy c{smem, gmem, pred, false};
  if (g_copies_at_issue) {
    land(c);
    c.landed = true;  // still pending for the group bookkeeping
  }
  r.current->open.push_back(c);
}

void cp_async_commit() {
  ThreadFiber* f = run().current;
  f->groups.push_back(std::move(f->open));
  f->open.clear();
}

void cp_async_wait(int pending_groups) {
  ThreadFiber* f = run().current;
  while (f->groups.size() > size_t(pending_groups)) {
    for (const Copy& c : f->groups.front()) land(c);
    f->groups.pop_front();
  }
}

cudaError_t run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.y != 1 || block.z != 1)
    return fail(cudaErrorInvalidConfiguration, "block size (the emulator runs 1-D blocks of 1..1024 threads)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7FFFFFFFu)
    return fail(cudaErrorInvalidConfiguration, "grid size");
  const auto it = g_max_smem.find(kernel);
  const size_t allowed = it == g_max_smem.end() ? 48 * 1024 : size_t(it->second);
  if (smem > allowed || smem > g_ceiling)
    return fail(cudaErrorInvalidValue, "dynamic shared memory over the kernel's limit (" + std::to_string(smem) +
                                           " bytes, allowed " + std::to_string(std::min(allowed, g_ceiling)) + ")");
  ++g_launches;
  BlockRun r;
  r.fibers.resize(threads);
  for (uint64_t t = 0; t < threads; ++t) {
    r.fibers[t].stack.reset(new char[kStackBytes]);
    r.fibers[t].tid = uint3{unsigned(t), 0, 0};
  }
  r.bdim = block;
  r.gdim = grid;
  r.body = &body;
  r.smem_bytes = smem;
  r.smem.reset(static_cast<unsigned char*>(std::aligned_alloc(128, std::max<size_t>(128, (smem + 127) / 128 * 128))));
  std::mt19937_64 rng(g_seed);
  BlockRun* outer = g_run;
  g_run = &r;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          r.bid = uint3{x, y, z};
          std::memset(r.smem.get(), 0xFF, smem);
          run_block(r, rng);
        }
  } catch (const std::exception& e) {
    g_run = outer;
    return fail(kDivergence, e.what());
  }
  g_run = outer;
  return cudaSuccess;
}

cudaError_t take_last_error() {
  const cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t err) {
  if (err == cudaSuccess) return "no error";
  return g_message.empty() ? "emulated launch failed" : g_message.c_str();
}

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || size_t(bytes) > g_ceiling)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(bytes) +
                                           " bytes of dynamic shared memory is over the device's " +
                                           std::to_string(g_ceiling));
  g_max_smem[kernel] = bytes;
  return cudaSuccess;
}

void set_schedule_seed(uint64_t seed) { g_seed = seed; }
void set_copies_at_issue(bool at_issue) { g_copies_at_issue = at_issue; }
void set_warp_greedy(bool greedy) { g_warp_greedy = greedy; }
void set_smem_ceiling(size_t bytes) { g_ceiling = bytes; }
void set_device(int sm_count, size_t smem_per_sm) {
  g_sm_count = sm_count;
  g_smem_per_sm = smem_per_sm;
}
int sm_count() { return g_sm_count; }
size_t smem_ceiling() { return g_ceiling; }
size_t smem_per_sm() { return g_smem_per_sm; }

int occupancy(int block_threads, size_t smem) {
  // What the hardware's calculator would say with registers to spare: threads (2048 per SM),
  // resident blocks (32) and shared memory (1 KiB reserved per block, as from sm_80 on).
  if (block_threads < 1 || smem > g_ceiling) return 0;
  const size_t by_smem = g_smem_per_sm / (smem + 1024);
  return int(std::min<size_t>({size_t(2048 / block_threads), size_t(32), by_smem}));
}
void reset_kernel_attributes() { g_max_smem.clear(); }
uint64_t launches() { return g_launches; }

}  // namespace emu
