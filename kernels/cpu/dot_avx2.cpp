// AVX2 + FMA + F16C dot products (compiled with -mavx2 -mfma -mf16c; only called when the
// CPU probe reports these features).
#include <immintrin.h>

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
    return t;
  }();
  return &table;
}

}  // namespace tpserve::kernels
