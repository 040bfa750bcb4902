// STREAM-style read bandwidth at a given thread count, with the kernels' own pinned thread pool
// (the same placement decode uses): every thread sums its contiguous part of a buffer much larger
// than the caches with AVX-512 (or AVX2) loads; the best of several passes is reported. Three read
// patterns are timed, and the fastest is the figure: one stream per thread, and four streams per
// thread (the thread's part in four quarters read side by side) with software prefetch 2 KB or
// 1 KB ahead, a few prefetched streams as the decode kernels read their weights. On the Xeon VM
// four streams read up to ~1.3x faster than one; on the Zen 5 VM the 1 KB distance read 2-8 %
// faster than 2 KB (medians of 8-20 interleaved passes).
//   membw --threads N [--mib 2048] [--passes 5]   -> one JSON line {"threads","gb_per_s",...}
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpu/thread_pool.h"
#include "plain_read.h"

namespace {

__attribute__((target("avx512f"))) float SumAvx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, passes = 5;
  size_t mib = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    if (a == "--mib") mib = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--passes") passes = std::atoi(argv[i + 1]);
  }
  std::vector<int> cpus;
  for (int t = 0; t < threads; ++t) cpus.push_back(t);
  tpserve::kernels::SetThreads(threads, cpus);
  const size_t n = mib * 1048576 / sizeof(float);
  float* buf = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  // First touch from the threads that will read each part.
  tpserve::kernels::ParallelFor(static_cast<int>(n / 4096), 1, [&](int b, int e) {
    std::memset(buf + size_t(b) * 4096, 0, size_t(e - b) * 4096 * sizeof(float));
  });
  const bool avx512 = __builtin_cpu_supports("avx512f");
  volatile float sink = 0;
  auto measure = [&](float (*sum)(const float*, size_t)) {
    double best = 0;
    for (int p = 0; p < passes; ++p) {
      const auto t0 = std::chrono::steady_clock::now();
      tpserve::kernels::ParallelFor(static_cast<int>(n / 4096), 1, [&](int b, int e) {
        sink = sink + sum(buf + size_t(b) * 4096, size_t(e - b) * 4096);
      });
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, n * sizeof(float) / s / 1e9);
    }
    return best;
  };
  const double one = measure(avx512 ? SumAvx512 : tpserve::perf::SumPlain);
  const double four = avx512 ? measure(tpserve::perf::SumFourStreams<2048>) : 0.0;
  const double four_1k = avx512 ? measure(tpserve::perf::SumFourStreams<1024>) : 0.0;
  std::cout << nlohmann::json{{"threads", threads},
                              {"mib", mib},
                              {"passes", passes},
                              {"gb_per_s", std::max({one, four, four_1k})},
                              {"one_stream_gb_per_s", one},
                              {"four_streams_gb_per_s", four},
                              {"four_streams_1k_gb_per_s", four_1k}}
                   .dump()
            << std::endl;
  std::free(buf);
  return 0;
}
