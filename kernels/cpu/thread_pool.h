// Threads of one rank for the kernels (`--threads N`): a fixed pool whose workers are pinned to
// given CPUs and wait for work by spinning briefly, then sleeping, so a decode step's many small
// matmuls do not pay a wake-up each. ParallelFor splits [0, total) into one contiguous chunk per
// thread, the calling thread running chunk 0 (ParallelForDynamic: fixed-size chunks taken in
// turns). Chunks never change per-element arithmetic, so results are bitwise the same at any
// thread count.
#pragma once

#include <functional>
#include <vector>

namespace tpserve::kernels {

// Sets the kernel threads of this process (1 = no pool) and pins thread i to cpus[i] when cpus is
// non-empty (cpus.size() must then equal n). Call before any kernel runs, from the main thread.
void SetThreads(int n, const std::vector<int>& cpus = {});
int NumThreads();

// fn(begin, end) over contiguous chunks of [0, total), at most NumThreads() of them, each at
// least `grain` long and starting at a multiple of `grain`. Runs inline when one chunk suffices.
// Not reentrant.
void ParallelFor(int total, int grain, const std::function<void(int, int)>& fn);

// fn(begin, end) over chunks of [0, total) of `chunk` items each (the last may be shorter), which
// the threads take in turn until none is left (one inline call fn(0, total) when one thread or
// one chunk suffices): a thread slowed down (a busy SMT sibling, the hypervisor) does fewer of
// them instead of holding the others up at the end. For loops over many independent pieces
// (weight blocks and rows, attention heads); results are the same as ParallelFor's where fn's work per
// item does not depend on the chunk. Not reentrant.
void ParallelForDynamic(int total, int chunk, const std::function<void(int, int)>& fn);

}  // namespace tpserve::kernels
