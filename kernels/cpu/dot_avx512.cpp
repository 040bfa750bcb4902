// AVX-512 dot products (compiled with -mavx512f -mavx512bw; only called when the CPU probe
// reports these features). The tail uses a masked load, so no scalar remainder loop.
#include <immintrin.h>

#include "cpu/int8_avx512.h"
#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

constexpr int kCacheLine = 64;
// How far ahead Rows4Impl prefetches each weight stream (the hardware prefetcher stops at every
// 4 KB page). On the Zen 5 VM 1 KB read as fast as 2 KB (f32, bench-1b shapes, 2 threads).
constexpr int kRowsPrefetchBytes = 2048;

inline __m512 LoadF32(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
inline __m512 LoadF16(const uint16_t* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 LoadBf16(const uint16_t* p, __mmask16 m) {
  __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

template <typename T, __m512 (*Load)(const T*, __mmask16)>
float DotImpl(const float* x, const void* wv, int k) {
  const T* w = static_cast<const T*>(wv);
  constexpr __mmask16 kAll = 0xffff;
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int i = 0;
  for (; i + 32 <= k; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), Load(w + i, kAll), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), Load(w + i + 16, kAll), a1);
  }
  for (; i < k; i += 16) {
    const int left = k - i;
    const __mmask16 m = left >= 16 ? kAll : static_cast<__mmask16>((1u << left) - 1u);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), Load(w + i, m), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

// Four activation rows against one weight row: each weight chunk is loaded and widened once and
// feeds 4 x 2 accumulators. Each step prefetches the same chunk of next_row (a row of a few KB
// ends before the hardware prefetcher has caught up). Per row, the chunking and summation order
// are exactly DotImpl's, so out[j] is bitwise DotImpl(x[j], w, k).
template <typename T, __m512 (*Load)(const T*, __mmask16)>
void Dot4Impl(const float* const* x, const void* wv, int k, float* out, const void* next_row) {
  const T* w = static_cast<const T*>(wv);
  constexpr __mmask16 kAll = 0xffff;
  __m512 a0[4], a1[4];
  for (int j = 0; j < 4; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
  const char* next = static_cast<const char*>(next_row);
  constexpr int kStepBytes = 32 * sizeof(T);
  int i = 0;
  for (; i + 32 <= k; i += 32) {
    if (next != nullptr) {
      for (int b = 0; b < kStepBytes; b += kCacheLine) _mm_prefetch(next + i * sizeof(T) + b, _MM_HINT_T0);
    }
    const __m512 w0 = Load(w + i, kAll), w1 = Load(w + i + 16, kAll);
    for (int j = 0; j < 4; ++j) {
      a0[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x[j] + i), w0, a0[j]);
      a1[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x[j] + i + 16), w1, a1[j]);
    }
  }
  for (; i < k; i += 16) {
    const int left = k - i;
    const __mmask16 m = left >= 16 ? kAll : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 w0 = Load(w + i, m);
    for (int j = 0; j < 4; ++j) a0[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x[j] + i), w0, a0[j]);
  }
  for (int j = 0; j < 4; ++j) out[j] = _mm512_reduce_add_ps(_mm512_add_ps(a0[j], a1[j]));
}

// One activation row against four weight rows (batch-1 decode): four independent weight streams
// keep more memory requests in flight, and each activation chunk is loaded once for the four.
// Each step also prefetches each stream kRowsPrefetchBytes ahead (see Rows4Fn). Per row, the
// chunking and summation order are exactly DotImpl's (bitwise equal results).
template <typename T, __m512 (*Load)(const T*, __mmask16)>
void Rows4Impl(const float* x, const void* wv, size_t row_stride, int k, float* out) {
  const char* base = static_cast<const char*>(wv);
  const T* w[4];
  for (int j = 0; j < 4; ++j) w[j] = reinterpret_cast<const T*>(base + j * row_stride);
  constexpr __mmask16 kAll = 0xffff;
  constexpr int kStepBytes = 32 * sizeof(T);
  __m512 a0[4], a1[4];
  for (int j = 0; j < 4; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
  int i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
    for (int j = 0; j < 4; ++j) {
      for (int b = 0; b < kStepBytes; b += kCacheLine) {
        _mm_prefetch(reinterpret_cast<const char*>(w[j] + i) + kRowsPrefetchBytes + b, _MM_HINT_T0);
      }
      a0[j] = _mm512_fmadd_ps(x0, Load(w[j] + i, kAll), a0[j]);
      a1[j] = _mm512_fmadd_ps(x1, Load(w[j] + i + 16, kAll), a1[j]);
    }
  }
  for (; i < k; i += 16) {
    const int left = k - i;
    const __mmask16 m = left >= 16 ? kAll : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 x0 = _mm512_maskz_loadu_ps(m, x + i);
    for (int j = 0; j < 4; ++j) a0[j] = _mm512_fmadd_ps(x0, Load(w[j] + i, m), a0[j]);
  }
  for (int j = 0; j < 4; ++j) out[j] = _mm512_reduce_add_ps(_mm512_add_ps(a0[j], a1[j]));
}

}  // namespace

int64_t DotI8Avx512(const int16_t* x, const int8_t* w, int k) {
  return int8_detail::DotI8Impl<false>(x, w, k);
}
void RowsI8Avx512(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out) {
  int8_detail::RowsI8Impl<kRowsI8, false>(x, w, row_stride, k, out);
}
void RowsI8BatchAvx512(const int16_t* x, size_t x_stride, int rows, const float* x_scales, const int8_t* w,
                       size_t row_stride, const float* row_scales, int k, float* y, size_t ldy) {
  int8_detail::RowsI8BatchAny<false>(x, x_stride, rows, x_scales, w, row_stride, row_scales, k, y, ldy);
}

// dot_avx512_packed.cpp
void PackedBf16Avx512(const float* x, int n, int kpad, const uint16_t* block, float* y, int ldy, int cols);

namespace {
CpuKernelTable MakeTable(bool vnni) {
  CpuKernelTable t;
  t.isa = "avx512";
  t.dot[static_cast<int>(DType::kF32)] = DotImpl<float, LoadF32>;
  t.dot[static_cast<int>(DType::kF16)] = DotImpl<uint16_t, LoadF16>;
  t.dot[static_cast<int>(DType::kBF16)] = DotImpl<uint16_t, LoadBf16>;
  t.dot4[static_cast<int>(DType::kF32)] = Dot4Impl<float, LoadF32>;
  t.dot4[static_cast<int>(DType::kF16)] = Dot4Impl<uint16_t, LoadF16>;
  t.dot4[static_cast<int>(DType::kBF16)] = Dot4Impl<uint16_t, LoadBf16>;
  t.rows4[static_cast<int>(DType::kF32)] = Rows4Impl<float, LoadF32>;
  t.rows4[static_cast<int>(DType::kF16)] = Rows4Impl<uint16_t, LoadF16>;
  t.rows4[static_cast<int>(DType::kBF16)] = Rows4Impl<uint16_t, LoadBf16>;
  t.dot_i8 = vnni ? DotI8Avx512Vnni : DotI8Avx512;
  t.rows_i8 = vnni ? RowsI8Avx512Vnni : RowsI8Avx512;
  t.rows_i8_batch = vnni ? RowsI8BatchAvx512Vnni : RowsI8BatchAvx512;
  t.amx_int8 = AmxInt8Usable() && AmxAllowedByEnvironment();  // the same bits either way
  t.packed_bf16 = PackedBf16Avx512;
  return t;
}
}  // namespace

const CpuKernelTable* Avx512Kernels() {
  // int8: VNNI kernels (their own translation unit, built with -mavx512vnni) where the CPU has it.
  static const CpuKernelTable table = MakeTable(__builtin_cpu_supports("avx512vnni"));
  return &table;
}

const CpuKernelTable* Avx512KernelsWithoutVnni() {
  if (KernelsForIsa("avx512") == nullptr) return nullptr;
  static const CpuKernelTable table = MakeTable(false);
  return &table;
}

}  // namespace tpserve::kernels
