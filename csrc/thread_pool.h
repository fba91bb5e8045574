// The package's own thread pool. No OpenMP: torch ships its own runtime and two fight.
#pragma once

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

// Splits [0, n) into chunks of at least `grain` items, about one per thread, and runs
// fn(begin, end) for each.
void parallel_range(index_t n, index_t grain, const std::function<void(index_t, index_t)>& fn);

}  // namespace sae
