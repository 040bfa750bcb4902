// Plain reads that the benches time as the memory's pace (perf/membw) or as a kernel's baseline
// (matvec_bench --against-read): sums of n floats, nothing but loads and adds.
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace tpserve::perf {

// Four quarters of p read side by side, each prefetched kAhead bytes ahead (AVX-512).
template <int kAhead>
__attribute__((target("avx512f"))) inline float SumFourStreams(const float* p, size_t n) {
  const size_t q = n / 4 / 16 * 16;
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (size_t i = 0; i < q; i += 16) {
    for (int s = 0; s < 4; ++s) {
      const float* at = p + s * q + i;
      _mm_prefetch(reinterpret_cast<const char*>(at) + kAhead, _MM_HINT_T0);
      a[s] = _mm512_add_ps(a[s], _mm512_loadu_ps(at));
    }
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  for (size_t i = 4 * q; i < n; ++i) sum += p[i];
  return sum;
}

// The portable read: one stream, eight sums.
inline float SumPlain(const float* p, size_t n) {
  float s[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) s[j] += p[i + j];
  }
  for (; i < n; ++i) s[0] += p[i];
  return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

}  // namespace tpserve::perf
