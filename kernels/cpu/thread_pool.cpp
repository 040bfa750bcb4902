#include "cpu/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace tpserve::kernels {
namespace {

void PinSelf(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

class Pool {
 public:
  Pool(int n, const std::vector<int>& cpus) : n_(n) {
    if (!cpus.empty()) PinSelf(cpus[0]);
    for (int i = 1; i < n; ++i) {
      workers_.emplace_back([this, i, cpu = cpus.empty() ? -1 : cpus[i]] {
        PinSelf(cpu);
        Work(i);
      });
    }
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  void Run(int chunks, const std::function<void(int)>& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      chunks_ = chunks;
      pending_.store(chunks - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0);
    // Wait for the workers' chunks (they are short: spin).
    while (pending_.load(std::memory_order_acquire) > 0) {
      __builtin_ia32_pause();
    }
  }

 private:
  void Work(int index) {
    uint64_t seen = 0;
    for (;;) {
      // Spin ~100 us for the next step's work before sleeping: decode issues matmuls back to back.
      // The clock is read once per 64 pauses, not per pause (it is the spin's only real cost).
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      for (int i = 1; generation_.load(std::memory_order_acquire) == seen; ++i) {
        __builtin_ia32_pause();
        if (i % 64 == 0 && std::chrono::steady_clock::now() >= spin_until) break;
      }
      const std::function<void(int)>* fn = nullptr;
      int chunks = 0;
      {
        // Take a consistent snapshot of the job under the lock (Run publishes under it too).
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load() != seen; });
        seen = generation_.load();
        if (stop_) return;
        fn = fn_;
        chunks = chunks_;
      }
      if (index < chunks) {
        (*fn)(index);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  const int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* fn_ = nullptr;
  int chunks_ = 0;
  bool stop_ = false;
};

std::unique_ptr<Pool> g_pool;

}  // namespace

void SetThreads(int n, const std::vector<int>& cpus) {
  g_pool.reset();
  if (n > 1 || !cpus.empty()) g_pool = std::make_unique<Pool>(std::max(1, n), cpus);
}

int NumThreads() {
  return g_pool ? g_pool->size() : 1;
}

void ParallelFor(int total, int grain, const std::function<void(int, int)>& fn) {
  const int threads = NumThreads();
  grain = std::max(1, grain);
  const int chunks = std::clamp(total / grain, 1, threads);
  if (chunks <= 1) {
    if (total > 0) fn(0, total);
    return;
  }
  // Chunk edges fall on multiples of grain, so a kernel that takes rows in groups (of 4 weight
  // rows, say) never sees a group cut between two threads.
  const int64_t units = (static_cast<int64_t>(total) + grain - 1) / grain;
  auto edge = [&](int c) { return static_cast<int>(std::min<int64_t>(total, units * c / chunks * grain)); };
  g_pool->Run(chunks, [&](int c) {
    const int begin = edge(c), end = edge(c + 1);
    if (end > begin) fn(begin, end);
  });
}

void ParallelForDynamic(int total, int chunk, const std::function<void(int, int)>& fn) {
  chunk = std::max(1, chunk);
  const int chunks = (total + chunk - 1) / chunk;
  const int threads = std::min(NumThreads(), chunks);
  if (threads <= 1) {
    if (total > 0) fn(0, total);
    return;
  }
  std::atomic<int> next{0};
  g_pool->Run(threads, [&](int) {
    for (int c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(c * chunk, std::min(total, (c + 1) * chunk));
    }
  });
}

}  // namespace tpserve::kernels
