// Batched products over packed bf16 blocks on AVX512-BF16 (VDPBF16PS), for CPUs with that
// instruction but no AMX (AMD Zen 4/5, Intel Cooper Lake). The packed layout already holds, per
// input pair, the two values of 16 output rows as 16 32-bit lanes: exactly VDPBF16PS's operand,
// so a 64-byte load meets one broadcast activation pair with no widening (the few-row kernel
// widens to f32 and needs two FMAs per pair for half the products).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

#define TPSERVE_DOT_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline

// An activation pair read as one 32-bit word from the bf16 rows (may_alias: the buffer holds uint16_t).
using Pair = uint32_t __attribute__((may_alias));

constexpr int kGroups = kPackedRows / 16;  // 16-column groups (one 64-byte load each) per pair
// Rows go in groups of kWideRows against all four column groups (24 sums in registers).
constexpr int kWideRows = 6;
// A block goes in chunks of kChunkPairs input pairs (64 x 256 bytes = 16 KB of weights), each read
// from memory by the first row group and from L1 by the others. While the groups pass over one
// chunk they prefetch the next, each group its share of the pairs, so the memory stream runs on
// while the later groups compute.
constexpr int kChunkPairs = 64;

TPSERVE_DOT_TARGET __mmask16 ColumnMask(int left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << std::max(left, 0)) - 1u);
}

// R activation rows (bf16 pairs as 32-bit words, row stride xs words) against the first V column
// groups of one block, over pairs [p0, p1): R x V sums in registers (the loops fully unrolled:
// GCC's own limit, 16 iterations, would leave the sums on the stack). The sums start from y (an
// earlier chunk's) where p0 > 0. Columns at or past `cols` are neither read nor written. As row
// group `group` of `groups`, it prefetches one pair of the next chunk at every groups-th pair.
template <int R, int V>
TPSERVE_DOT_TARGET void DotRows(const Pair* x, int xs, const uint16_t* block, int p0, int p1, float* y,
                                int ldy, int cols, int group, int groups) {
  __m512 acc[R][V];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 32
    for (int j = 0; j < V; ++j) {
      acc[r][j] =
          p0 > 0 ? _mm512_maskz_loadu_ps(ColumnMask(cols - 16 * j), y + static_cast<size_t>(r) * ldy + 16 * j)
                 : _mm512_setzero_ps();
    }
  }
  const size_t ahead = static_cast<size_t>(kChunkPairs) * 2 * kPackedRows;
  int turn = group;  // pairs until this group's next prefetch
  for (int p = p0; p < p1; ++p) {
    const uint16_t* w = block + static_cast<size_t>(p) * 2 * kPackedRows;
    if (turn-- == 0) {
      turn = groups - 1;
#pragma GCC unroll 4
      for (int j = 0; j < kGroups; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(w + ahead + 32 * j), _MM_HINT_T0);
    }
    __m512bh wv[V];
#pragma GCC unroll 32
    for (int j = 0; j < V; ++j) wv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + 32 * j));
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512bh xp =
          reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(x[static_cast<size_t>(r) * xs + p])));
#pragma GCC unroll 32
      for (int j = 0; j < V; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xp, wv[j]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 32
    for (int j = 0; j < V; ++j)
      _mm512_mask_storeu_ps(y + static_cast<size_t>(r) * ldy + 16 * j, ColumnMask(cols - 16 * j), acc[r][j]);
  }
}

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void RowGroup(const Pair* x, int xs,
                                                                              const uint16_t* block, int p0,
                                                                              int p1, float* y, int ldy,
                                                                              int cols, int group,
                                                                              int groups) {
  if (cols > 32) return DotRows<R, kGroups>(x, xs, block, p0, p1, y, ldy, cols, group, groups);
  DotRows<R, 2>(x, xs, block, p0, p1, y, ldy, cols, group, groups);  // a last partial block: half of it
}

}  // namespace

bool Bf16DotUsable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

void PackedBf16Dot(const uint16_t* x, int ldx, int n, int kpad, const uint16_t* block, float* y, int ldy,
                   int cols) {
  using Fn = void (*)(const Pair*, int, const uint16_t*, int, int, float*, int, int, int, int);
  static constexpr Fn kByRows[kWideRows] = {RowGroup<1>, RowGroup<2>, RowGroup<3>,
                                            RowGroup<4>, RowGroup<5>, RowGroup<6>};
  const auto* xw = reinterpret_cast<const Pair*>(x);
  const int pairs = kpad / 2, xs = ldx / 2, groups = (n + kWideRows - 1) / kWideRows;
  for (int p0 = 0; p0 < pairs; p0 += kChunkPairs) {
    const int p1 = std::min(pairs, p0 + kChunkPairs);
    for (int g = 0; g < groups; ++g) {
      const int r = g * kWideRows;
      kByRows[std::min(kWideRows, n - r) - 1](xw + static_cast<size_t>(r) * xs, xs, block, p0, p1,
                                              y + static_cast<size_t>(r) * ldy, ldy, cols, g, groups);
    }
  }
}

}  // namespace tpserve::kernels
