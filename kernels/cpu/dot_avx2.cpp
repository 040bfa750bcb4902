// AVX2 + FMA + F16C dot products (compiled with -mavx2 -mfma -mf16c; only called when the
// CPU probe reports these features).
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

inline __m256 LoadF32(const float* p) {
  return _mm256_loadu_ps(p);
}
inline __m256 LoadF16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 LoadBf16(const uint16_t* p) {
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// int8 weights x int16 activations, exact: 16 products per step (pairwise into 8 int32 lanes),
// lanes widened into int64 every 256 steps (a lane gains at most 2 * 127 * 32767 per step).
int64_t DotI8(const int16_t* x, const int8_t* w, int k) {
  int64_t total = 0;
  int i = 0;
  while (i + 16 <= k) {
    __m256i acc = _mm256_setzero_si256();
    for (int steps = 0; steps < 256 && i + 16 <= k; ++steps, i += 16) {
      const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
    }
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
    for (int32_t v : lanes) total += v;
  }
  for (; i < k; ++i) total += static_cast<int32_t>(x[i]) * w[i];
  return total;
}

// Eight int32 vectors summed lane by lane into one: lane i of the result is the sum of v[i]'s lanes.
inline __m256i SumLanes8(const __m256i* v) {
  const __m256i b0 = _mm256_hadd_epi32(v[0], v[1]), b1 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i b2 = _mm256_hadd_epi32(v[4], v[5]), b3 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i c0 = _mm256_hadd_epi32(b0, b1), c1 = _mm256_hadd_epi32(b2, b3);  // per 128-bit half
  return _mm256_add_epi32(_mm256_permute2x128_si256(c0, c1, 0x20), _mm256_permute2x128_si256(c0, c1, 0x31));
}

// RowsI8BatchFn's contract (kernels.h) within AVX2's 16 registers: T (1 or 2)
// activation rows against 4 weight rows, 8 sums in registers, each weight step widened once for
// the T rows. Lanes are summed (SumLanes8) every 512 elements, within the int32 bound (8 lanes of
// 32 steps of 2 * 127 * 32767), into double totals (exact), then scaled as MatmulNT scales.
template <int T>
void I8TileAvx2(const int16_t* x, size_t x_stride, const float* x_scales, const int8_t* first,
                size_t row_stride, const float* row_scales, int k, float* y, size_t ldy) {
  constexpr int R = 4;
  const int8_t* w[R];
  for (int j = 0; j < R; ++j) w[j] = first + j * row_stride;
  __m256d total[T];
  for (auto& v : total) v = _mm256_setzero_pd();
  int i = 0;
  while (i + 16 <= k) {
    __m256i acc[8];
    for (auto& v : acc) v = _mm256_setzero_si256();
    const int end = std::min(k, i + 512);
    for (; i + 16 <= end; i += 16) {
      __m256i xv[T];
      for (int t = 0; t < T; ++t)
        xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + t * x_stride + i));
      for (int j = 0; j < R; ++j) {
        const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[j] + i)));
        for (int t = 0; t < T; ++t)
          acc[t * R + j] = _mm256_add_epi32(acc[t * R + j], _mm256_madd_epi16(xv[t], wv));
      }
    }
    const __m256i sums = SumLanes8(acc);  // lanes t * 4 + j
    total[0] = _mm256_add_pd(total[0], _mm256_cvtepi32_pd(_mm256_castsi256_si128(sums)));
    if constexpr (T == 2)
      total[1] = _mm256_add_pd(total[1], _mm256_cvtepi32_pd(_mm256_extracti128_si256(sums, 1)));
  }
  alignas(32) double out[T][R];
  for (int t = 0; t < T; ++t) _mm256_store_pd(out[t], total[t]);
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < R; ++j) {
      int64_t tail = 0;  // the last k % 16 elements
      for (int e = i; e < k; ++e) tail += static_cast<int32_t>(x[t * x_stride + e]) * w[j][e];
      y[t * ldy + j] = ScaleInt8Dot(out[t][j] + static_cast<double>(tail), x_scales[t], row_scales[j]);
    }
  }
}

// kernels.h: RowsI8BatchFn. The 8 weight rows as two groups of 4, the activation rows in pairs.
void RowsI8BatchAvx2(const int16_t* x, size_t x_stride, int rows, const float* x_scales, const int8_t* w,
                     size_t row_stride, const float* row_scales, int k, float* y, size_t ldy) {
  static_assert(kI8BatchWeightRows == 8);
  for (int h = 0; h < 8; h += 4) {
    for (int t = 0; t < rows; t += 2) {
      (rows - t >= 2 ? I8TileAvx2<2> : I8TileAvx2<1>)(x + t * x_stride, x_stride, x_scales + t,
                                                      w + h * row_stride, row_stride, row_scales + h, k,
                                                      y + t * ldy + h, ldy);
    }
  }
}

template <typename T, __m256 (*Load)(const T*), float (*Scalar)(T)>
float DotImpl(const float* x, const void* wv, int k) {
  const T* w = static_cast<const T*>(wv);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), Load(w + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), Load(w + i + 8), a1);
  }
  for (; i + 8 <= k; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), Load(w + i), a0);
  float sum = HorizontalSum(_mm256_add_ps(a0, a1));
  for (; i < k; ++i) sum += x[i] * Scalar(w[i]);
  return sum;
}

float ScalarF32(float v) {
  return v;
}

// Four single dots: the same arithmetic as dot, so results match it bitwise.
template <DotFn Dot>
void Dot4(const float* const* x, const void* w, int k, float* out, const void* /*next*/) {
  for (int j = 0; j < 4; ++j) out[j] = Dot(x[j], w, k);
}

}  // namespace

const CpuKernelTable* Avx2Kernels() {
  static const CpuKernelTable table = [] {
    CpuKernelTable t;
    t.isa = "avx2";
    t.dot[static_cast<int>(DType::kF32)] = DotImpl<float, LoadF32, ScalarF32>;
    t.dot[static_cast<int>(DType::kF16)] = DotImpl<uint16_t, LoadF16, F16ToF32>;
    t.dot[static_cast<int>(DType::kBF16)] = DotImpl<uint16_t, LoadBf16, Bf16ToF32>;
    t.dot4[static_cast<int>(DType::kF32)] = Dot4<DotImpl<float, LoadF32, ScalarF32>>;
    t.dot4[static_cast<int>(DType::kF16)] = Dot4<DotImpl<uint16_t, LoadF16, F16ToF32>>;
    t.dot4[static_cast<int>(DType::kBF16)] = Dot4<DotImpl<uint16_t, LoadBf16, Bf16ToF32>>;
    t.dot_i8 = DotI8;
    t.rows_i8_batch = RowsI8BatchAvx2;
    return t;
  }();
  return &table;
}

}  // namespace tpserve::kernels
