#include "thread_pool.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "interrupt.h"

namespace sae {
namespace {

struct Job {
  const std::function<void(index_t)>* fn;
  index_t n_tasks;
  CancelScope* scope;              // the call's (interrupt.h), shared with the workers
  int max_helpers;                 // workers allowed besides the caller
  std::atomic<index_t> next{0};
  int helpers = 0;                 // workers inside the job; guarded by Pool::mutex
  std::exception_ptr error;        // guarded by error_mutex
  std::mutex error_mutex;
  std::condition_variable helpers_left;

  // Claims and runs tasks until none are left (or the call is interrupted).
  void work() {
    ScopeOnThread on(scope);
    for (index_t t; (t = next.fetch_add(1)) < n_tasks;) {
      if (interrupted()) {
        next.store(n_tasks);
        break;
      }
      try {
        (*fn)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  bool open() const { return next.load() < n_tasks && helpers < max_helpers; }
};

class Pool {
 public:
  explicit Pool(int n) : target_(std::max(n, 1)) {}

  void set_threads(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    target_ = std::max(n, 1);
  }
  int threads() {
    std::lock_guard<std::mutex> lock(mutex_);
    return target_;
  }

  void run(index_t n_tasks, const std::function<void(index_t)>& fn) {
    if (n_tasks <= 0) return;
    Job job;
    job.fn = &fn;
    job.n_tasks = n_tasks;
    job.scope = current_scope();
    std::list<Job*>::iterator where;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job.max_helpers = int(std::min<index_t>(target_ - 1, n_tasks - 1));
      if (job.max_helpers > 0) {
        grow_locked(job.max_helpers);
        where = jobs_.insert(jobs_.end(), &job);
      }
    }
    if (job.max_helpers > 0) work_available_.notify_all();
    job.work();
    if (job.max_helpers > 0) {
      // No worker may join once the job leaves the list; wait for those inside to leave,
      // since the job lives on this stack frame. The wait wakes now and then to poll for an
      // interrupt (never with the pool's mutex held: the poll may take the GIL).
      std::unique_lock<std::mutex> lock(mutex_);
      jobs_.erase(where);
      while (!job.helpers_left.wait_for(lock, std::chrono::milliseconds(20), [&] { return job.helpers == 0; })) {
        lock.unlock();
        {
          ScopeOnThread on(job.scope);
          interrupted();
        }
        lock.lock();
      }
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  void grow_locked(int wanted) {
    while (int(workers_) < wanted) {
      std::thread(&Pool::worker_loop, this).detach();
      ++workers_;
    }
  }

  void worker_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      Job* job = nullptr;
      work_available_.wait(lock, [&] {
        for (Job* j : jobs_)
          if (j->open()) { job = j; return true; }
        return false;
      });
      ++job->helpers;
      lock.unlock();
      job->work();
      lock.lock();
      if (--job->helpers == 0) job->helpers_left.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable work_available_;
  std::list<Job*> jobs_;
  size_t workers_ = 0;
  int target_;
};

// The pool is deliberately leaked: its detached workers sleep until process exit, and no
// destructor runs while Python is tearing down. A forked child gets a fresh pool, since the
// parent's worker threads do not exist there (see after_fork_in_child).
std::mutex g_pool_mutex;
Pool* g_pool = nullptr;
pid_t g_pool_pid = 0;
int g_requested = 1;

Pool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr || g_pool_pid != getpid()) {
    g_pool = new Pool(g_requested);
    g_pool_pid = getpid();
  }
  return *g_pool;
}

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
std::atomic<GompParallel> g_gomp{nullptr};

// One parallel_for on an OpenMP team: every member claims tasks from a shared counter.
struct TeamJob {
  const std::function<void(index_t)>* fn;
  index_t n_tasks;
  CancelScope* scope;
  std::atomic<index_t> next{0};
  std::atomic<index_t> in_flight{0};  // members between claiming a task and finishing it
  std::mutex error_mutex;
  std::exception_ptr error;

  static void member(void* self) {
    auto* job = static_cast<TeamJob*>(self);
    ScopeOnThread on(job->scope);
    for (;;) {
      // Counted before the claim, so the calling thread below never misses a task in flight.
      job->in_flight.fetch_add(1);
      const index_t t = job->next.fetch_add(1);
      if (t >= job->n_tasks || interrupted()) {
        if (t < job->n_tasks) job->next.store(job->n_tasks);
        job->in_flight.fetch_sub(1);
        break;
      }
      try {
        (*job->fn)(t);
      } catch (...) {  // exceptions must not cross the OpenMP runtime
        std::lock_guard<std::mutex> lock(job->error_mutex);
        if (!job->error) job->error = std::current_exception();
      }
      job->in_flight.fetch_sub(1);
    }
    // The calling thread keeps polling for an interrupt until the other members are done, rather
    // than waiting in the OpenMP barrier where it could not.
    if (job->scope != nullptr && job->scope->owned_here())
      while (job->in_flight.load() > 0) {
        interrupted();
        std::this_thread::yield();
      }
  }
};

// A forked child (a DataLoader worker, multiprocessing with fork) has only the thread that forked.
// libgomp's team from the parent is gone but libgomp does not know it: a parallel region there
// waits forever for the missing threads. So the child never uses the OpenMP runtime, forgets the
// parent's pool (its mutex may have been held by a thread that no longer exists) and runs on one
// thread, as torch's DataLoader sets its workers; set_num_threads in the child starts a fresh
// pool of our own threads.
void after_fork_in_child() {
  g_gomp.store(nullptr);
  new (&g_pool_mutex) std::mutex();
  g_pool = nullptr;
  g_pool_pid = 0;
  g_requested = 1;
}

[[maybe_unused]] const int g_fork_handler = pthread_atfork(nullptr, nullptr, &after_fork_in_child);

}  // namespace

void use_openmp_runtime(std::uintptr_t gomp_parallel) { g_gomp.store(reinterpret_cast<GompParallel>(gomp_parallel)); }

bool using_openmp_runtime() { return g_gomp.load() != nullptr; }

void set_num_threads(int n) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_requested = std::max(n, 1);
  }
  pool().set_threads(n);
}

int num_threads() { return pool().threads(); }

void parallel_for(index_t n_tasks, const std::function<void(index_t)>& fn) {
  if (n_tasks <= 0) return;
  const index_t threads = std::min<index_t>(num_threads(), n_tasks);
  if (threads <= 1) {
    for (index_t t = 0; t < n_tasks && !interrupted(); ++t) fn(t);
    return;
  }
  if (GompParallel gomp = g_gomp.load()) {
    TeamJob job;
    job.fn = &fn;
    job.n_tasks = n_tasks;
    job.scope = current_scope();
    gomp(&TeamJob::member, &job, unsigned(threads), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  pool().run(n_tasks, fn);
}

void parallel_range(index_t n, index_t grain, const std::function<void(index_t, index_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<index_t>(grain, 1);
  const index_t by_grain = (n + grain - 1) / grain;
  const index_t chunks = std::max<index_t>(1, std::min<index_t>(by_grain, num_threads()));
  const index_t step = (n + chunks - 1) / chunks;
  parallel_for(chunks, [&](index_t c) {
    const index_t begin = c * step;
    const index_t end = std::min(n, begin + step);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace sae
