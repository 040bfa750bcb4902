// int8 x int16 exact dot products for AVX-512, shared by dot_avx512.cpp (vpmaddwd + vpaddd) and
// dot_avx512_vnni.cpp (VNNI vpdpwssd, compiled with -mavx512vnni and chosen only on CPUs with it).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"

namespace tpserve::kernels {

int64_t DotI8Avx512(const int16_t* x, const int8_t* w, int k);
void RowsI8Avx512(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out);
int64_t DotI8Avx512Vnni(const int16_t* x, const int8_t* w, int k);
void RowsI8Avx512Vnni(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out);
void RowsI8BatchAvx512(const int16_t* x, size_t x_stride, int rows, const float* x_scales, const int8_t* w,
                       size_t row_stride, const float* row_scales, int k, float* y, size_t ldy);
void RowsI8BatchAvx512Vnni(const int16_t* x, size_t x_stride, int rows, const float* x_scales,
                           const int8_t* w, size_t row_stride, const float* row_scales, int k, float* y,
                           size_t ldy);

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
  // In place through asm: for the intrinsic, GCC 12 copies every accumulator to a fresh register
  // and back around each instruction (and spills some), which cost the batch kernel ~2x.
  if constexpr (kVnni) {
    asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
    return acc;
  }
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

// Sixteen int32 vectors summed lane by lane into one: lane i of the result is the sum of all
// lanes of v[i]. Four levels of interleave-and-add (15 adds) instead of sixteen reductions.
inline __m512i SumLanes16(const __m512i* v) {
  __m512i b[8], c[4];
  for (int p = 0; p < 8; ++p)  // per 128-bit lane: v[2p]'s elements 0+2, 1+3 and v[2p+1]'s, interleaved
    b[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]),
                            _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
  for (int q = 0; q < 4; ++q)  // per 128-bit lane: the four vectors' sums of that lane, in order
    c[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * q], b[2 * q + 1]),
                            _mm512_unpackhi_epi64(b[2 * q], b[2 * q + 1]));
  __m512i d[2];
  for (int h = 0; h < 2; ++h)  // across 128-bit lanes: lanes 0+1 and 2+3 of c[2h], then of c[2h+1]
    d[h] = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2 * h], c[2 * h + 1], 0x88),
                            _mm512_shuffle_i32x4(c[2 * h], c[2 * h + 1], 0xdd));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(d[0], d[1], 0x88), _mm512_shuffle_i32x4(d[0], d[1], 0xdd));
}

// Steps of 32 elements between two SumLanes16 (int32) flushes into the totals: a lane gains at
// most 2 * 127 * 32767 per step (weights within +-127 and activations within +-32767, as
// QuantizeRowInt8/Int16 give), so sixteen lanes of sixteen steps stay below 2^31.
inline constexpr int kI8BatchFlushSteps = 16;

// Activation rows per register tile of the batch kernel (3 x 8 = 24 sums in registers).
inline constexpr int kI8TileRows = 3;
// The batch kernel goes through k in blocks of this many elements, all its activation rows in
// one block before the next: 8 weight rows of a block (16 KB) stay in L1 while the tiles of
// activation rows pass.
inline constexpr int kI8BlockElems = 2048;

// T activation rows (x_stride apart) against the 8 weight rows w[] over elements [i0, i1): each
// 32-element step of a weight row is widened once for the T rows, whose sums stay in T x 8
// registers; every 16 steps they are summed across lanes all at once (SumLanes16) and added to
// totals (T rows of 8 doubles; exact: integers below 2^53). Each step prefetches the line
// `ahead` bytes on in each weight row (so each line twice; every other step: 0.93-1.0x, this VM).
template <int T, bool kVnni>
inline void I8Block(const int16_t* x, size_t x_stride, const int8_t* const* w, size_t ahead, int i0, int i1,
                    double* totals) {
  constexpr int R = kI8BatchWeightRows;
  constexpr int kGroups = (T * R + 15) / 16;  // of 16 sums, each summed across lanes at once
  static_assert(T >= 1 && kGroups <= 2);
  // One 32-element step: activations and weights past i1 read as zeros where `m` masks them.
  auto step = [&](__m512i * acc, int i, __mmask32 m) __attribute__((always_inline)) {
    __m512i xv[T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_epi16(m, x + t * x_stride + i);
#pragma GCC unroll 16
    for (int j = 0; j < R; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(w[j] + i) + ahead, _MM_HINT_T0);
      const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, w[j] + i));
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[t * R + j] = MaddAcc<kVnni>(acc[t * R + j], xv[t], wv);
    }
  };
  for (int i = i0; i < i1;) {
    __m512i acc[16 * kGroups];
#pragma GCC unroll 32
    for (int a = 0; a < 16 * kGroups; ++a) acc[a] = _mm512_setzero_si512();
    const int end = std::min(i1, i + kI8BatchFlushSteps * 32);
    for (; i + 32 <= end; i += 32) step(acc, i, ~__mmask32{0});
    if (i < end) {  // the last partial step of the row
      step(acc, i, static_cast<__mmask32>((1u << (end - i)) - 1u));
      i = end;
    }
#pragma GCC unroll 2
    for (int g = 0; g < kGroups; ++g) {
      const __m512i sums = SumLanes16(acc + 16 * g);  // rows 2g (low half) and 2g + 1
      double* row = totals + 16 * g;
      _mm512_storeu_pd(row,
                       _mm512_add_pd(_mm512_loadu_pd(row), _mm512_cvtepi32_pd(_mm512_castsi512_si256(sums))));
      if (2 * g + 1 < T) {
        _mm512_storeu_pd(row + 8, _mm512_add_pd(_mm512_loadu_pd(row + 8),
                                                _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(sums, 1))));
      }
    }
  }
}

// kernels.h: RowsI8BatchFn. The rows go in tiles of kI8TileRows (the last may have fewer: 16 rows
// as tiles of 3, 3, 3, 3, 2, 2 instead of five of 3 and one of 1 ran ~7 % slower), k in blocks of
// kI8BlockElems; then y[t * ldy + j] = total * x_scales[t] * row_scales[j] in double, rounded to
// float: ScaleInt8Dot's operations in vectors, so the same bits. Prefetch: within a row, the next
// block's line at the same offset; in the last block, the next group of weight rows' line at the
// same offset from the block's start (MatmulNT takes the groups in order, row_stride = k): the
// whole next group where k is one block, its first k - b0 bytes a row otherwise. (One thread, 16
// rows, this VM: with the next group prefetched, 16 KB groups of k = 2048 ran 0.63 -> 0.79 of the
// packed bf16 rate, and small's lm_head 0.58 -> 0.79.)
template <bool kVnni>
inline void RowsI8BatchAny(const int16_t* x, size_t x_stride, int rows, const float* x_scales,
                           const int8_t* first, size_t row_stride, const float* row_scales, int k, float* y,
                           size_t ldy) {
  constexpr int R = kI8BatchWeightRows;
  static_assert(R == 8, "a row's eight totals fill one vector of doubles");
  const int8_t* w[R];
  for (int j = 0; j < R; ++j) w[j] = first + j * row_stride;
  alignas(64) double totals[kI8BatchRows * R];
  std::fill_n(totals, rows * R, 0.0);
  for (int b0 = 0; b0 < k; b0 += kI8BlockElems) {
    const int b1 = std::min(k, b0 + kI8BlockElems);
    const size_t ahead = b1 < k ? kI8BlockElems : R * row_stride - b0;
    for (int t = 0; t < rows; t += kI8TileRows) {
      const int16_t* xt = x + t * x_stride;
      double* tt = totals + t * R;
      switch (std::min(kI8TileRows, rows - t)) {
        case 1:
          I8Block<1, kVnni>(xt, x_stride, w, ahead, b0, b1, tt);
          break;
        case 2:
          I8Block<2, kVnni>(xt, x_stride, w, ahead, b0, b1, tt);
          break;
        default:
          I8Block<3, kVnni>(xt, x_stride, w, ahead, b0, b1, tt);
      }
    }
  }
  const __m512d rs = _mm512_cvtps_pd(_mm256_loadu_ps(row_scales));
  for (int t = 0; t < rows; ++t) {
    const __m512d v =
        _mm512_mul_pd(_mm512_mul_pd(_mm512_load_pd(totals + t * R), _mm512_set1_pd(x_scales[t])), rs);
    _mm256_storeu_ps(y + t * ldy, _mm512_cvtpd_ps(v));
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
