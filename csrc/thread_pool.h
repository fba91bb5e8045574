// The package's thread pool. No OpenMP of our own: torch ships its own runtime and two fight.
//
// By default the pool is a set of our own worker threads. When Python finds the OpenMP runtime
// torch itself loaded (libgomp on Linux wheels), it hands us that runtime's GOMP_parallel and the
// pool runs each parallel_for as a team of torch's OpenMP threads instead: right after a parallel
// torch op those threads are still spinning (libgomp spins for milliseconds before sleeping), so
// extra threads of ours would share the cores with them and run at half speed, while the team
// starts at once. We never link or ship OpenMP either way.
#pragma once

#include <cstdint>

#include <functional>

#include "common.h"

namespace sae {

// Sets how many threads (the caller included) a parallel_for may use. n >= 1.
void set_num_threads(int n);
int num_threads();

// Runs fn(task) for every task in [0, n_tasks), on up to num_threads() threads with the
// calling thread taking part. Safe to call from several threads at once (each call is its own
// job) and from inside a task. The first exception thrown by a task is rethrown here.
void parallel_for(index_t n_tasks, const std::function<void(index_t)>& fn);

// Runs parallel work on an OpenMP runtime already in the process: `gomp_parallel` is the address
// of its GOMP_parallel(fn, data, num_threads, flags); 0 goes back to our own threads.
void use_openmp_runtime(std::uintptr_t gomp_parallel);
bool using_openmp_runtime();

// Splits [0, n) into chunks of at least `grain` items, about one per thread, and runs
// fn(begin, end) for each.
void parallel_range(index_t n, index_t grain, const std::function<void(index_t, index_t)>& fn);

}  // namespace sae
