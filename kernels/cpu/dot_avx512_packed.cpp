// The packed bf16 kernel (kernels.h: PackedBf16Fn) on AVX-512: each 64-byte load holds one input
// pair of 16 output rows; the even and odd halves are widened to f32 by shifting and masking
// (bf16 is the top half of an f32) and meet the pair's two activations, broadcast, in FMAs.
#include <immintrin.h>

#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

// How far ahead each weight stream is prefetched (the hardware prefetcher stops at every 4 KB
// page), and how many streams a call reads side by side: one stream alone does not keep enough
// cache misses outstanding, and more than a few read slower. On the Zen 5 VM, reading the
// bench-1b matrices against a plain four-stream read of the same bytes in the same run (2 threads,
// 20 interleaved rounds; docs/performance.md, thirteenth session), 3 streams 1.5 KB ahead reached
// 0.91-1.01 of it, 4 streams 0.85-0.96, 8 streams 2 KB ahead 0.64-0.79 and 2 streams ~0.81;
// skewing the streams off power-of-two offsets changed nothing, so it is their number that counts.
constexpr int kPrefetchBytes = 1536;
constexpr int kStreams = 3;

// R activation rows against one block: R x 64 f32 sums in registers, one pass over the block.
// The block's pairs are read as kStreams equal segments side by side, all adding into the same
// sums.
template <int R>
void BlockRows(const float* x, int kpad, const uint16_t* block, float* y, int ldy, int cols) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  auto step = [&](int p) {
    const uint16_t* w = block + static_cast<size_t>(p) * 2 * kPackedRows;  // 256 bytes per pair
    for (int j = 0; j < 4; ++j)
      _mm_prefetch(reinterpret_cast<const char*>(w) + kPrefetchBytes + 64 * j, _MM_HINT_T0);
    __m512 even[4], odd[4];
    for (int j = 0; j < 4; ++j) {
      const __m512i v = _mm512_loadu_si512(w + 32 * j);
      even[j] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      odd[j] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
    }
    for (int r = 0; r < R; ++r) {
      const float* xr = x + static_cast<size_t>(r) * kpad + 2 * p;
      const __m512 x0 = _mm512_set1_ps(xr[0]), x1 = _mm512_set1_ps(xr[1]);
      for (int j = 0; j < 4; ++j)
        acc[r][j] = _mm512_fmadd_ps(x1, odd[j], _mm512_fmadd_ps(x0, even[j], acc[r][j]));
    }
  };
  const int pairs = kpad / 2, seg = pairs / kStreams;
  for (int p = 0; p < seg; ++p) {
    for (int g = 0; g < kStreams; ++g) step(g * seg + p);
  }
  for (int p = kStreams * seg; p < pairs; ++p) step(p);
  for (int r = 0; r < R; ++r) {
    float* yr = y + static_cast<size_t>(r) * ldy;
    for (int j = 0; j < 4; ++j) {
      const int left = cols - 16 * j;
      if (left <= 0) break;
      const __mmask16 m =
          left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
      _mm512_mask_storeu_ps(yr + 16 * j, m, acc[r][j]);
    }
  }
}

}  // namespace

void PackedBf16Avx512(const float* x, int n, int kpad, const uint16_t* block, float* y, int ldy, int cols) {
  int r = 0;
  for (; r + 4 <= n; r += 4) {
    BlockRows<4>(x + static_cast<size_t>(r) * kpad, kpad, block, y + static_cast<size_t>(r) * ldy, ldy, cols);
  }
  const float* xr = x + static_cast<size_t>(r) * kpad;
  float* yr = y + static_cast<size_t>(r) * ldy;
  switch (n - r) {
    case 3:
      return BlockRows<3>(xr, kpad, block, yr, ldy, cols);
    case 2:
      return BlockRows<2>(xr, kpad, block, yr, ldy, cols);
    case 1:
      return BlockRows<1>(xr, kpad, block, yr, ldy, cols);
    default:
      return;
  }
}

}  // namespace tpserve::kernels
