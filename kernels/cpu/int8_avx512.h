// int8 x int16 exact dot products for AVX-512, shared by dot_avx512.cpp (vpmaddwd + vpaddd) and
// dot_avx512_vnni.cpp (VNNI vpdpwssd, compiled with -mavx512vnni and chosen only on CPUs with it).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "cpu/kernels.h"

namespace tpserve::kernels {

int64_t DotI8Avx512(const int16_t* x, const int8_t* w, int k);
void RowsI8Avx512(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out);
int64_t DotI8Avx512Vnni(const int16_t* x, const int8_t* w, int k);
void RowsI8Avx512Vnni(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out);
void RowsI8BatchAvx512(const int16_t* x, size_t x_stride, const int8_t* w, size_t row_stride, int k,
                       int64_t* out);
void RowsI8BatchAvx512Vnni(const int16_t* x, size_t x_stride, const int8_t* w, size_t row_stride, int k,
                           int64_t* out);

// Internal linkage: each including file (built with different ISA flags) keeps its own copy.
namespace int8_detail {
namespace {

// int8 weights x int16 activations, exact (see kernels.h): 32 products per step into 16 int32
// lanes (VNNI vpdpwssd where the CPU has it, vpmaddwd + vpaddd otherwise). A lane gains at most
// 2 * 127 * 32767 per step, so lanes are widened into int64 every 256 steps, before overflow.
inline constexpr int kI8FlushSteps = 256;

inline int64_t WidenSum(__m512i acc) {
  const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc));
  const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc, 1));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

template <bool kVnni>
inline __m512i MaddAcc(__m512i acc, __m512i x, __m512i w) {
#ifdef __AVX512VNNI__
  if constexpr (kVnni) return _mm512_dpwssd_epi32(acc, x, w);
#endif
  return _mm512_add_epi32(acc, _mm512_madd_epi16(x, w));
}

// How far ahead of each row's reads the kernel prefetches (see RowsI8Fn): the hardware prefetcher
// stops at every 4 KB page, and perf/matvec_bench reads fastest from about this distance.
inline constexpr int kI8PrefetchBytes = 2048;

// R rows at a stride (R = 1 is the single dot): full 32-element steps with plain loads and two
// accumulators per row, then one masked step for the tail (zeros past k). Each 64-byte step also
// prefetches the line kI8PrefetchBytes ahead in each row's stream (see RowsI8Fn).
template <int R, bool kVnni>
inline void RowsI8Impl(const int16_t* x, const int8_t* first, size_t row_stride, int k, int64_t* out) {
  const int8_t* w[R];
  for (int j = 0; j < R; ++j) w[j] = first + j * row_stride;
  int64_t total[R] = {};
  int i = 0;
  while (i + 32 <= k) {
    __m512i a0[R], a1[R];
    for (int j = 0; j < R; ++j) a0[j] = a1[j] = _mm512_setzero_si512();
    int steps = 0;
    for (; steps < kI8FlushSteps && i + 64 <= k; steps += 1, i += 64) {
      const __m512i x0 = _mm512_loadu_si512(x + i), x1 = _mm512_loadu_si512(x + i + 32);
      for (int j = 0; j < R; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(w[j] + i) + kI8PrefetchBytes, _MM_HINT_T0);
        const __m512i w0 =
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + i)));
        const __m512i w1 =
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + i + 32)));
        a0[j] = MaddAcc<kVnni>(a0[j], x0, w0);
        a1[j] = MaddAcc<kVnni>(a1[j], x1, w1);
      }
    }
    if (steps < kI8FlushSteps && i + 32 <= k) {
      const __m512i x0 = _mm512_loadu_si512(x + i);
      for (int j = 0; j < R; ++j) {
        a0[j] = MaddAcc<kVnni>(
            a0[j], x0, _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + i))));
      }
      i += 32;
    }
    for (int j = 0; j < R; ++j) total[j] += WidenSum(a0[j]) + WidenSum(a1[j]);
  }
  if (i < k) {
    const __mmask32 m = static_cast<__mmask32>((1u << (k - i)) - 1u);
    const __m512i xv = _mm512_maskz_loadu_epi16(m, x + i);
    for (int j = 0; j < R; ++j) {
      total[j] += WidenSum(MaddAcc<kVnni>(_mm512_setzero_si512(), xv,
                                          _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, w[j] + i))));
    }
  }
  for (int j = 0; j < R; ++j) out[j] = total[j];
}

// T activation rows (x_stride apart) against R weight rows (row_stride apart): each 32-element
// step of a weight row is widened once for all T rows, whose sums stay in T x R registers. The
// sums are exact, so out[t * R + j] equals RowsI8Impl's for row j and activation t bit for bit.
template <int T, int R, bool kVnni>
inline void RowsI8BatchImpl(const int16_t* x, size_t x_stride, const int8_t* first, size_t row_stride, int k,
                            int64_t* out) {
  const int8_t* w[R];
  for (int j = 0; j < R; ++j) w[j] = first + j * row_stride;
  int64_t total[T][R] = {};
  int i = 0;
  while (i + 32 <= k) {
    __m512i acc[T][R];
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < R; ++j) acc[t][j] = _mm512_setzero_si512();
    }
    for (int steps = 0; steps < kI8FlushSteps && i + 32 <= k; ++steps, i += 32) {
      __m512i xv[T];
      for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_si512(x + t * x_stride + i);
      for (int j = 0; j < R; ++j) {
        if (i % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(w[j] + i) + kI8PrefetchBytes, _MM_HINT_T0);
        const __m512i wv =
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + i)));
        for (int t = 0; t < T; ++t) acc[t][j] = MaddAcc<kVnni>(acc[t][j], xv[t], wv);
      }
    }
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < R; ++j) total[t][j] += WidenSum(acc[t][j]);
    }
  }
  if (i < k) {
    const __mmask32 m = static_cast<__mmask32>((1u << (k - i)) - 1u);
    for (int j = 0; j < R; ++j) {
      const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, w[j] + i));
      for (int t = 0; t < T; ++t) {
        const __m512i xv = _mm512_maskz_loadu_epi16(m, x + t * x_stride + i);
        total[t][j] += WidenSum(MaddAcc<kVnni>(_mm512_setzero_si512(), xv, wv));
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < R; ++j) out[t * R + j] = total[t][j];
  }
}

template <bool kVnni>
inline int64_t DotI8Impl(const int16_t* x, const int8_t* w, int k) {
  int64_t out;
  RowsI8Impl<1, kVnni>(x, w, static_cast<size_t>(k), k, &out);
  return out;
}

}  // namespace
}  // namespace int8_detail
}  // namespace tpserve::kernels
