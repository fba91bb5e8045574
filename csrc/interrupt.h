// Cooperative cancellation of long native calls, so Ctrl-C reaches Python within a fraction of a
// second instead of after the whole call.
//
// A call that wants it opens a CancelScope on its calling thread (the bindings do, for every op).
// Kernels call interrupted() at cheap points (between panel groups, between rows) and return early
// when it says so. On the calling thread, interrupted() asks the installed poll function at most
// every 100 ms whether to stop (the Python bindings' poll takes the GIL for a moment and
// runs Python's signal handlers); the answer is shared with every thread working on the call
// through the scope, which parallel_for hands to its workers. Outputs of a cancelled call are
// garbage: the caller raises instead of returning them.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

namespace sae {

// True: stop. Called only on the scope's own thread.
using PollFn = bool (*)();
void set_interrupt_poll(PollFn poll);

class CancelScope {
 public:
  CancelScope();
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  bool owned_here() const { return std::this_thread::get_id() == owner_; }

 private:
  friend bool interrupted();
  friend class ScopeOnThread;
  std::atomic<bool> cancelled_{false};
  std::thread::id owner_;
  std::chrono::steady_clock::time_point next_poll_;
  CancelScope* outer_;
};

// The scope of the call this thread is working on (nullptr: none).
CancelScope* current_scope();

// Makes `scope` current on a worker thread while it runs tasks of that call.
class ScopeOnThread {
 public:
  explicit ScopeOnThread(CancelScope* scope);
  ~ScopeOnThread();

 private:
  CancelScope* saved_;
};

// Whether the current call should stop. Cheap: a thread-local read and a relaxed load, plus a
// clock read on the calling thread.
bool interrupted();

}  // namespace sae
