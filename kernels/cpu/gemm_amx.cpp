// The packed bf16 block product on AMX-BF16 tiles (kernels.h: PackedBf16Amx). The packed layout
// is the AMX B-operand layout: one pair row of a block (256 bytes) holds 64 output rows x 2
// inputs, so a 16-pair x 16-output tile is 16 loads of 64 bytes at a 256-byte stride.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cpuid.h>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/amx_tile_config.h"
#include "cpu/dtype.h"
#include "cpu/env_switch.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace tpserve::kernels {
namespace {

// Linux hands out the 8 KB tile state only to processes that ask for it (arch_prctl).
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

// AMX-BF16 and AMX-TILE, and AVX512-BF16 for the attention's conversions (every CPU with AMX so far
// has it).
bool ProbeAmx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  // (libgcc's check also asks whether the OS saves the AVX-512 state.)
  if (!amx_bf16 || !amx_tile || !__builtin_cpu_supports("avx512bf16")) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Tiles for BlockRows (rows <= 16): 0-3 the four 16-column sums of the block (rows x 16 f32), 4
// the activations (rows x 32 bf16), 5 and 6 the weights (16 pairs x 16 columns).
AmxTileConfig RowsConfig(int rows) {
  AmxTileConfig cfg;
  for (int t = 0; t < 5; ++t) cfg.rows[t] = static_cast<uint8_t>(rows), cfg.colsb[t] = 64;
  for (int t = 5; t < 7; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  return cfg;
}

// Tiles for BlockRows32 (17 to 32 rows): 0 and 1 the first group's sums, 2 and 3 the second's, 4
// and 5 the two groups' activations, 6 and 7 the weights.
AmxTileConfig Rows32Config(int rows) {
  AmxTileConfig cfg;
  for (int t : {0, 1, 4}) cfg.rows[t] = kAmxTileRows, cfg.colsb[t] = 64;
  for (int t : {2, 3, 5}) cfg.rows[t] = static_cast<uint8_t>(rows - kAmxTileRows), cfg.colsb[t] = 64;
  for (int t : {6, 7}) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  return cfg;
}

// LDTILECFG costs about a quarter of a 64 KB block's product (k = 512, from L2), so a call loads
// a configuration only when the row count changes: once per call where n <= 32 or n is a multiple
// of 32 (batched decode, most prefill chunks), else twice per block (the last group's and back).
// `loaded` is the row count whose configuration the tiles hold (0: none yet).
void Configure(int rows, int* loaded) {
  if (rows == *loaded) return;
  const AmxTileConfig cfg = rows > kAmxTileRows ? Rows32Config(rows) : RowsConfig(rows);
  KeepTileConfigStores(cfg);
  _tile_loadconfig(&cfg);
  *loaded = rows;
}

// Batches of kGroupsOuterMinRows rows and more, with up to kGroupsOuterMaxK inputs (32 rows x 512
// bf16 = 32 KB of activation tiles, for L1) and calls of up to kGroupsOuterMaxBytes of weights
// (for L2), go through the weights group by group (PackedBf16Amx; at 64 rows it was no faster).
constexpr int kGroupsOuterMinRows = 128;
constexpr int kGroupsOuterMaxK = 512;
constexpr size_t kGroupsOuterMaxBytes = size_t{512} << 10;

// How far ahead the weights are prefetched: the hardware prefetcher stops at every 4 KB page,
// and one 32-input step reads exactly 4 KB of a block.
constexpr int kPrefetchSteps = 2;
constexpr int kStepBytes = 16 * 2 * kPackedRows * 2;  // 16 pairs of 64 rows, bf16

// The next block's lines, brought to L2 a few per step while the row groups of a large batch
// work on the current block, so the first pass over each block does not wait on memory (one
// thread, m 5632 x k 2048: 64 rows ~210 -> ~270 GFLOP/s, 512 rows ~275 -> ~305).
struct NextBlockPrefetch {
  const char* at = nullptr;
  const char* end = nullptr;
  int per_step = 0;
  void Step() {
    for (int i = 0; i < per_step && at < end; ++i, at += 64) _mm_prefetch(at, _MM_HINT_T1);
  }
};

// For batches of up to 32 rows (whose first pass over each block walks the call's 4 KB steps in
// order): while the kernel works through the 8 steps of one group, the next group's 8 steps are
// brought to L2 as 8 streams side by side, 8 lines of each per step, whole pages (a 17-32 row
// batch's second pass over the block then finds its half there). Prefetching each step's 4 KB
// whole, 2 steps ahead (as for larger batches), one page at a time, read about one stream's rate
// (matvec_bench --threads 1 --rows 16: 8.2-8.8 GB/s); with 8 pages in flight 13.7-15.3 (24-32
// rows: 1.11-1.14x, paired calls).
struct PageStreams {
  static constexpr int kLines = kStepBytes / 64, kPages = 8, kLinesPerStep = kLines / kPages;
  const char* base = nullptr;  // the call's first block
  int64_t pages = 0;           // 4 KB steps in the call's blocks
  int64_t page = 0;            // the step the kernel is on
  void Start(const void* blocks, int64_t total_pages) {
    base = static_cast<const char*>(blocks);
    pages = total_pages;
    page = 0;
    for (int64_t p = 0; p < std::min<int64_t>(kPages, pages); ++p) {  // the first group at once
      for (int l = 0; l < kLines; ++l) _mm_prefetch(base + p * kStepBytes + l * 64, _MM_HINT_T1);
    }
  }
  void Step() {
    const int64_t group_next = (page / kPages + 1) * kPages;
    const int line0 = static_cast<int>(page % kPages) * kLinesPerStep;
    for (int64_t p = group_next; p < std::min(group_next + kPages, pages); ++p) {
      for (int l = line0; l < line0 + kLinesPerStep; ++l) {
        _mm_prefetch(base + p * kStepBytes + l * 64, _MM_HINT_T1);
      }
    }
    ++page;
  }
};

// rows (<= 16) activation rows, as one group of AmxTileActivations, x one block: sums into c
// (rows x 64 f32, row stride ldc); the tiles configured by RowsConfig(rows). Each 32-input step
// loads the activation tile and the four weight tiles (two tile registers in turn) for the four
// products. Batches of up to 16 rows bring the weights to L2 through `streams` (PageStreams), others
// 2 steps ahead. Tile numbers are immediates in the intrinsics, hence the spelled-out code.
void BlockRows(const uint16_t* x, int kpad, const uint16_t* block, float* c, int ldc, NextBlockPrefetch& next,
               PageStreams* streams) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int kk = 0; kk < kpad; kk += 32) {
    const uint16_t* w = block + static_cast<size_t>(kk / 2) * 2 * kPackedRows;  // pairs kk / 2 ..
    if (streams != nullptr) {
      streams->Step();
    } else {
      const char* ahead = reinterpret_cast<const char*>(w) + kPrefetchSteps * kStepBytes;
      for (int l = 0; l < kStepBytes; l += 64) _mm_prefetch(ahead + l, _MM_HINT_T1);
    }
    next.Step();
    _tile_loadd(4, x + static_cast<size_t>(kk) * kAmxTileRows, 64);
    _tile_loadd(5, w, 256);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, w + 32, 256);
    _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(5, w + 64, 256);
    _tile_dpbf16ps(2, 4, 5);
    _tile_loadd(6, w + 96, 256);
    _tile_dpbf16ps(3, 4, 6);
  }
  const size_t stride = static_cast<size_t>(ldc) * sizeof(float);
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
  _tile_stored(2, c + 32, stride);
  _tile_stored(3, c + 48, stride);
}

// 17 to 32 activation rows (two groups of AmxTileActivations) x one block, in two passes over
// halves of the block's columns, the tiles configured by Rows32Config(rows): 0-3 the sums of group
// g and column tile j (2g + j), 4 and 5 the two groups' activations, 6 and 7 the half's two weight
// tiles. Each weight tile then serves both groups, and each pass reads its own half of every
// 256-byte pair row, so the block comes from memory once (the 16-row kernel, run twice, would
// read it twice). `streams` (batches of up to 32 rows) or a prefetch 2 steps ahead bring the
// weights to L2, and `next` the following block (batches over 32 rows), as in BlockRows.
void BlockRows32(const uint16_t* x, int kpad, const uint16_t* block, float* c, int ldc,
                 NextBlockPrefetch& next, PageStreams* streams) {
  const uint16_t* x1 = x + static_cast<size_t>(kAmxTileRows) * kpad;
  for (int half = 0; half < 2; ++half) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int kk = 0; kk < kpad; kk += 32) {
      const uint16_t* w = block + static_cast<size_t>(kk / 2) * 2 * kPackedRows + 64 * half;
      if (streams != nullptr) {
        if (half == 0) streams->Step();  // whole pages: the second pass finds its half in L2
      } else {
        const char* ahead = reinterpret_cast<const char*>(w) + kPrefetchSteps * kStepBytes;
        for (int l = 0; l < kStepBytes; l += 256) {
          _mm_prefetch(ahead + l, _MM_HINT_T1);
          _mm_prefetch(ahead + l + 64, _MM_HINT_T1);
        }
      }
      next.Step();
      _tile_loadd(4, x + static_cast<size_t>(kk) * kAmxTileRows, 64);
      _tile_loadd(5, x1 + static_cast<size_t>(kk) * kAmxTileRows, 64);
      _tile_loadd(6, w, 256);
      _tile_loadd(7, w + 32, 256);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    float* out = c + 32 * half;
    const size_t stride = static_cast<size_t>(ldc) * sizeof(float);
    float* out1 = out + static_cast<size_t>(kAmxTileRows) * ldc;  // the second group's rows
    _tile_stored(0, out, stride);
    _tile_stored(1, out + 16, stride);
    _tile_stored(2, out1, stride);
    _tile_stored(3, out1 + 16, stride);
  }
}

// One tile row of bf16 from 32 floats, those from `valid` on as zeros (not read). VCVTNE2PS2BF16
// rounds to nearest even, as F32ToBf16 does, but flushes denormals to zero.
__attribute__((target("avx512f,avx512bf16"))) void Bf16TileRow(const float* src, int valid, uint16_t* dst) {
  auto mask = [](int n) { return static_cast<__mmask16>(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1); };
  const __m512 lo = _mm512_maskz_loadu_ps(mask(valid), src),
               hi = _mm512_maskz_loadu_ps(mask(valid - 16), src + 16);
  _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
}

// One activation row's int16 values as its B-tile bytes for MatmulInt8Amx, steps x 64 inputs: in
// each step's high-byte tile (dst) and low-byte tile (dst + 1024), inputs 4g .. 4g + 3 as the dword
// at row g (64 bytes apart); dst points at the row's dword column (4 x its row in the group).
__attribute__((target("avx512f,avx512bw"))) void Int8TileRow(const int16_t* x, int steps, int8_t* dst) {
  const __m512i rows =
      _mm512_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960);
  for (int s = 0; s < steps; ++s) {
    const __m512i a = _mm512_loadu_si512(x + s * 64), b = _mm512_loadu_si512(x + s * 64 + 32);
    const __m512i hi =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srai_epi16(a, 8))),
                           _mm512_cvtepi16_epi8(_mm512_srai_epi16(b, 8)), 1);
    const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(a)),
                                          _mm512_cvtepi16_epi8(b), 1);  // (the low bytes, truncated)
    int8_t* at = dst + static_cast<size_t>(s) * 2048;
    _mm512_i32scatter_epi32(at, rows, hi, 1);
    _mm512_i32scatter_epi32(at + 1024, rows, lo, 1);
  }
}

// Eight (256 hi + lo) * x * w in double, rounded to float.
__attribute__((target("avx512f,avx512vl,avx512dq"), always_inline)) inline __m256 Int8Scaled8(__m256i hi,
                                                                                              __m256i lo,
                                                                                              __m512d x,
                                                                                              __m512d w) {
  const __m512d d =
      _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(hi), _mm512_set1_pd(256.0)), _mm512_cvtepi32_pd(lo));
  return _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(d, x), w));
}

// r[j] = column j of the 16 x 16 floats in r[0..16) (rows in, columns out): 32-bit, then 64-bit
// interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles.
__attribute__((target("avx512f"), always_inline)) inline void Transpose16x16(__m512* r) {
  __m512 t[16], u[16];
  for (int k = 0; k < 8; ++k) {  // lane L of t[2k]: r[2k][4L], r[2k+1][4L], r[2k][4L+1], r[2k+1][4L+1]
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int m = 0; m < 4; ++m) {  // lane L of u[4m + c]: rows 4m .. 4m + 3 of column 4L + c
    u[4 * m] =
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * m]), _mm512_castps_pd(t[4 * m + 2])));
    u[4 * m + 1] =
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * m]), _mm512_castps_pd(t[4 * m + 2])));
    u[4 * m + 2] =
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * m + 1]), _mm512_castps_pd(t[4 * m + 3])));
    u[4 * m + 3] =
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * m + 1]), _mm512_castps_pd(t[4 * m + 3])));
  }
  for (int c = 0; c < 4; ++c) {  // column 4L + c: lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
    const __m512 a0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88),
                 b0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
    const __m512 a1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88),
                 b1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_f32x4(a0, a1, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(a0, a1, 0xdd);
    r[4 + c] = _mm512_shuffle_f32x4(b0, b1, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(b0, b1, 0xdd);
  }
}

// y[a * ldy + o] = (256 hi + lo) * xs[a] * scales[o] for a < rows and o < 16, hi and lo the
// tiles' sums (row o, column a), in double as MatmulNT's int8 path scales them (the int64 dot is
// exact in double: |dot| < 2^53), rounded to float; then transposed in registers, so that each
// activation row's 16 outputs are one store (16 scatters took ~15 % of an int8 prefill).
__attribute__((target("avx512f,avx512vl,avx512dq"))) void Int8TileSums(const int32_t* hi, const int32_t* lo,
                                                                       const float* xs, int rows,
                                                                       const float* scales, float* y,
                                                                       int ldy) {
  rows = std::min(rows, 16);  // one tile's activation rows
  const __mmask16 valid = static_cast<__mmask16>(rows >= 16 ? 0xffff : (1u << rows) - 1u);
  const __m512d x0 = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(static_cast<__mmask8>(valid), xs));
  const __m512d x1 = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(static_cast<__mmask8>(valid >> 8), xs + 8));
  __m512 v[16];
  for (int o = 0; o < 16; ++o) {
    const __m512i h = _mm512_load_si512(hi + o * 16), l = _mm512_load_si512(lo + o * 16);
    const __m512d w = _mm512_set1_pd(static_cast<double>(scales[o]));
    const __m256 v0 = Int8Scaled8(_mm512_castsi512_si256(h), _mm512_castsi512_si256(l), x0, w);
    const __m256 v1 = Int8Scaled8(_mm512_extracti64x4_epi64(h, 1), _mm512_extracti64x4_epi64(l, 1), x1, w);
    v[o] = _mm512_insertf32x8(_mm512_castps256_ps512(v0), v1, 1);
  }
  Transpose16x16(v);
  for (int a = 0; a < rows; ++a) _mm512_storeu_ps(y + static_cast<size_t>(a) * ldy, v[a]);
}

// Keys rounded up to whole 64-key groups: the tiles PrepareAmxKv writes, and the most that
// AttentionPrefillAmx's score rows span.
int PaddedKeys(int keys) {
  return (keys + kAmxKeyBlock - 1) / kAmxKeyBlock * kAmxKeyBlock;
}

}  // namespace

bool AmxBf16Usable() {
  static const bool usable = ProbeAmx();
  return usable;
}

bool AmxAllowedByEnvironment() {
  return EnvSwitchOn(kAmxSwitch);
}

bool AmxInt8Usable() {
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return AmxBf16Usable() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 25) & 1);
  }();
  return usable;
}

void MatmulInt8Amx(const int16_t* xq, const float* xs, int n, const int8_t* w, const float* row_scales, int m,
                   int k, float* y) {
  // B tiles of every 16-row activation group and 64-input step: the high bytes (signed) and the low
  // bytes (unsigned) of the int16 activations, x = 256 hi + lo, in the VNNI layout: tile row g holds
  // inputs 4g .. 4g + 3 of each of the 16 activation rows.
  const int steps = k / kAmxInt8Step, groups = (n + kAmxTileRows - 1) / kAmxTileRows;
  thread_local AlignedVector<int8_t> b_tiles;
  AlignedVector<int8_t>& bt = b_tiles;
  // Kept between calls; a last group's rows past n keep stale bytes, whose sums are not stored.
  bt.resize(static_cast<size_t>(groups) * steps * 2048);
  for (int t = 0; t < n; ++t) {
    Int8TileRow(xq + static_cast<size_t>(t) * k, steps,
                bt.data() + static_cast<size_t>(t / kAmxTileRows) * steps * 2048 + (t % kAmxTileRows) * 4);
  }
  // Output rows in pairs of 16-row A tiles, straight from the row-major weights (stride k); tiles
  // 0-3 the sums (hi and lo of each half), 4 and 5 the weights, 6 and 7 the activations' hi and lo.
  const int pairs = m / (2 * kAmxTileRows);
  // Threads take a few pairs at a time (about eight turns each), and each prefetches only the
  // pairs of its own turn.
  const int turn = std::max(1, pairs / (8 * NumThreads()));
  ParallelForDynamic(pairs, turn, [&](int p0, int p1) {
    const AmxTileConfig cfg = AllTiles16x64();
    KeepTileConfigStores(cfg);
    _tile_loadconfig(&cfg);
    alignas(64) int32_t c[4][kAmxTileRows * kAmxTileRows];
    for (int p = p0; p < p1; ++p) {
      const int o0 = p * 2 * kAmxTileRows;
      const int8_t* w0 = w + static_cast<size_t>(o0) * k;
      const int8_t* w1 = w0 + static_cast<size_t>(kAmxTileRows) * k;
      for (int g = 0; g < groups; ++g) {
        const int8_t* b = bt.data() + static_cast<size_t>(g) * steps * 2048;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int s = 0; s < steps; ++s) {
          if (g == 0) {  // the next pair's rows (contiguous) to L2, spread over this pair's first pass
            const char* next = reinterpret_cast<const char*>(w1 + static_cast<size_t>(kAmxTileRows) * k);
            const size_t per_step = 2 * kAmxTileRows * kAmxInt8Step, at = static_cast<size_t>(s) * per_step;
            if (p + 1 < p1) {
              for (size_t l = 0; l < per_step; l += 64) _mm_prefetch(next + at + l, _MM_HINT_T1);
            }
          }
          _tile_loadd(4, w0 + s * kAmxInt8Step, k);
          _tile_loadd(5, w1 + s * kAmxInt8Step, k);
          _tile_loadd(6, b + static_cast<size_t>(s) * 2048, 64);
          _tile_loadd(7, b + static_cast<size_t>(s) * 2048 + 1024, 64);
          _tile_dpbssd(0, 4, 6);
          _tile_dpbsud(1, 4, 7);
          _tile_dpbssd(2, 5, 6);
          _tile_dpbsud(3, 5, 7);
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
        // c[2h][o * 16 + a], c[2h + 1][...]: hi and lo sums of output o0 + 16h + o against
        // activation row 16g + a.
        const int rows = std::min(kAmxTileRows, n - g * kAmxTileRows);
        for (int h = 0; h < 2; ++h) {
          Int8TileSums(c[2 * h], c[2 * h + 1], xs + g * kAmxTileRows, rows,
                       row_scales + o0 + h * kAmxTileRows,
                       y + static_cast<size_t>(g) * kAmxTileRows * m + o0 + h * kAmxTileRows, m);
        }
      }
    }
    _tile_release();
  });
}

void AmxTileActivations(const float* x, int n, int k, int kpad, AlignedVector<uint16_t>* out) {
  const int groups = (n + kAmxTileRows - 1) / kAmxTileRows;
  out->resize(static_cast<size_t>(groups) * kAmxTileRows * kpad);  // kept between calls: no refill
  uint16_t* tiles = out->data();
  // Each row straight into its tile rows (zeros past k), 32 inputs per conversion; the last
  // group's rows past n are zeros.
  ParallelFor(groups * kAmxTileRows, 1, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const float* row = t < n ? x + static_cast<size_t>(t) * k : x;  // padding rows read nothing
      uint16_t* at =
          tiles + static_cast<size_t>(t / kAmxTileRows) * kAmxTileRows * kpad + (t % kAmxTileRows) * 32;
      for (int kk = 0; kk < kpad; kk += 32) {
        Bf16TileRow(row + kk, t < n ? k - kk : 0, at + static_cast<size_t>(kk) * kAmxTileRows);
      }
    }
  });
}

void PackedBf16Amx(const uint16_t* x, int n, int kpad, const uint16_t* blocks, int nblocks, float* y, int ldy,
                   int cols) {
  alignas(64) float part[2 * kAmxTileRows * kPackedRows];  // a partial block's sums, copied out
  int loaded = 0;
  const size_t block_bytes = static_cast<size_t>(kpad) * kPackedRows * sizeof(uint16_t);
  // Steps over one block: two passes per group of 17-32 rows, one per group of up to 16.
  const int rest = n % (2 * kAmxTileRows);
  const int passes = n / (2 * kAmxTileRows) * 2 + (rest > kAmxTileRows ? 2 : rest > 0 ? 1 : 0);
  const int steps_per_block = passes * (kpad / 32);
  PageStreams streams;
  const bool use_streams = n <= 2 * kAmxTileRows;
  if (use_streams) streams.Start(blocks, static_cast<int64_t>(nblocks) * (kpad / 32));
  // One group of up to 32 rows against block b, the tiles' sums into y.
  auto group_block = [&](int r0, int b, NextBlockPrefetch& next) {
    const uint16_t* block = blocks + static_cast<size_t>(b) * kpad * kPackedRows;
    float* yb = y + static_cast<size_t>(b) * kPackedRows;
    const int valid = std::min(kPackedRows, cols - b * kPackedRows);
    const int rows = std::min(n - r0, 2 * kAmxTileRows);
    const uint16_t* xg = x + static_cast<size_t>(r0) * kpad;
    // A full block's tiles go straight into y; a partial one's through `part`.
    float* c = valid == kPackedRows ? yb + static_cast<size_t>(r0) * ldy : part;
    const int ldc = valid == kPackedRows ? ldy : kPackedRows;
    Configure(rows, &loaded);
    if (rows > kAmxTileRows) {
      BlockRows32(xg, kpad, block, c, ldc, next, use_streams ? &streams : nullptr);
    } else {
      BlockRows(xg, kpad, block, c, ldc, next, use_streams ? &streams : nullptr);
    }
    if (c == part) {
      for (int r = 0; r < rows; ++r)
        std::memcpy(yb + static_cast<size_t>(r0 + r) * ldy, part + r * kPackedRows, valid * sizeof(float));
    }
  };
  auto next_block = [&](int b, int steps) {  // block b + 1 to L2 over `steps` steps of block b
    NextBlockPrefetch next;
    if (b + 1 < nblocks) {
      next.at = reinterpret_cast<const char*>(blocks + static_cast<size_t>(b + 1) * kpad * kPackedRows);
      next.end = next.at + block_bytes;
      next.per_step = static_cast<int>((block_bytes / 64 + steps - 1) / steps);
    }
    return next;
  };
  if (n >= kGroupsOuterMinRows && kpad <= kGroupsOuterMaxK && nblocks * block_bytes <= kGroupsOuterMaxBytes) {
    // Short rows: each group's activation tiles (<= 32 KB) stay in L1 while it passes every block
    // of the call, the weights coming from L2 (they stay there after the first group). Block by
    // block, both operands would stream from L2.
    for (int r0 = 0; r0 < n; r0 += 2 * kAmxTileRows) {
      for (int b = 0; b < nblocks; ++b) {
        // The first group (32 rows: two passes) brings each next block to L2.
        NextBlockPrefetch next = r0 == 0 ? next_block(b, 2 * (kpad / 32)) : NextBlockPrefetch{};
        group_block(r0, b, next);
      }
    }
  } else {
    for (int b = 0; b < nblocks; ++b) {
      NextBlockPrefetch next = n > 2 * kAmxTileRows ? next_block(b, steps_per_block) : NextBlockPrefetch{};
      for (int r0 = 0; r0 < n; r0 += 2 * kAmxTileRows) group_block(r0, b, next);
    }
  }
  _tile_release();
}

void PrepareAmxKv(const void* const* k_blocks, const void* const* v_blocks, DType dtype, int block_size,
                  int keys, int d, AmxKvTiles* out) {
  const int padded = PaddedKeys(keys);
  const int dsteps = d / 32, dcols = d / 16;
  const size_t elem = DTypeSize(dtype);
  out->keys = keys, out->d = d;
  out->kt.assign(static_cast<size_t>(padded) * d, 0);
  out->vt.assign(static_cast<size_t>(padded) * d, 0);
  // Key j's row in bf16: the cache's own bits where it holds bf16, else rounded into `row`.
  std::vector<uint16_t> row(d);
  auto bf16_row = [&](const void* const* blocks, int j) {
    const void* src =
        static_cast<const char*>(blocks[j / block_size]) + static_cast<size_t>(j % block_size) * d * elem;
    if (dtype == DType::kBF16) return static_cast<const uint16_t*>(src);
    ConvertDType(src, dtype, row.data(), DType::kBF16, d);
    return static_cast<const uint16_t*>(row.data());
  };
  // kt tile (key block jb, dims 32 ds ..): element (pair p, key j, e) is dim 32 ds + 2p + e of key 16 jb + j.
  for (int j = 0; j < keys; ++j) {
    const uint16_t* r = bf16_row(k_blocks, j);
    uint16_t* tiles = &out->kt[static_cast<size_t>(j / 16) * dsteps * 512 + (j % 16) * 2];
    for (int c = 0; c < d; c += 2) std::memcpy(&tiles[(c / 32) * 512 + (c % 32 / 2) * 32], &r[c], 4);
  }
  // vt tile (keys 32 js .., dims 16 cb ..): element (pair p, dim c, e) is dim 16 cb + c of key
  // 32 js + 2p + e.
  for (int j = 0; j < keys; ++j) {
    const uint16_t* r = bf16_row(v_blocks, j);
    uint16_t* tiles = &out->vt[static_cast<size_t>(j / 32) * dcols * 512 + (j % 32 / 2) * 32 + j % 2];
    for (int c = 0; c < d; ++c) tiles[(c / 16) * 512 + (c % 16) * 2] = r[c];
  }
}

void PrepareAmxKv(const float* k, const float* v, int keys, int d, AmxKvTiles* out) {
  const void* kb[] = {k};
  const void* vb[] = {v};
  PrepareAmxKv(kb, vb, DType::kF32, std::max(keys, 1), keys, d, out);
}

void AttentionPrefillAmx(const float* q, int ldq, int rows, int pos0, const AmxKvTiles& kv, float scale,
                         float* out, int ldo) {
  const int d = kv.d, dsteps = d / 32, dcols = d / 16;
  if (kv.keys < pos0 + rows || !AmxAttentionSupports(d)) {  // a caller's bug: the tiles would be overrun
    std::fprintf(stderr, "AttentionPrefillAmx: %d keys of dim %d for rows up to position %d\n", kv.keys, d,
                 pos0 + rows);
    std::abort();
  }
  // Per thread, kept across calls: the query tiles, the scores and the probability tiles of 16 rows.
  thread_local AlignedVector<uint16_t> qa, pa;
  thread_local AlignedVector<float> s;
  const int max_keys = PaddedKeys(pos0 + rows);
  qa.resize(static_cast<size_t>(dsteps) * 512);
  pa.resize(static_cast<size_t>(max_keys / 32) * 512);
  s.resize(static_cast<size_t>(kAmxTileRows) * max_keys);
  int loaded = 0;
  for (int r0 = 0; r0 < rows; r0 += kAmxTileRows) {
    const int nt = std::min(kAmxTileRows, rows - r0), keys = pos0 + r0 + nt;
    const int ld = PaddedKeys(keys), groups = ld / kAmxKeyBlock;
    const int ksteps = (keys + 31) / 32;
    Configure(nt, &loaded);
    for (int r = 0; r < nt; ++r) {
      const float* row = q + static_cast<size_t>(r0 + r) * ldq;
      for (int ds = 0; ds < dsteps; ++ds)
        Bf16TileRow(row + ds * 32, 32, &qa[static_cast<size_t>(ds) * 512 + r * 32]);
    }
    // Scores of 64 keys at a time: tiles 0-3 the four 16-key blocks, 4 the queries, 5 and 6 the keys.
    const size_t s_stride = static_cast<size_t>(ld) * sizeof(float);
    for (int g = 0; g < groups; ++g) {
      const uint16_t* kt = &kv.kt[static_cast<size_t>(4 * g) * dsteps * 512];
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int ds = 0; ds < dsteps; ++ds) {
        _tile_loadd(4, &qa[static_cast<size_t>(ds) * 512], 64);
        _tile_loadd(5, kt + static_cast<size_t>(0 * dsteps + ds) * 512, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, kt + static_cast<size_t>(1 * dsteps + ds) * 512, 64);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, kt + static_cast<size_t>(2 * dsteps + ds) * 512, 64);
        _tile_dpbf16ps(2, 4, 5);
        _tile_loadd(6, kt + static_cast<size_t>(3 * dsteps + ds) * 512, 64);
        _tile_dpbf16ps(3, 4, 6);
      }
      float* sg = &s[static_cast<size_t>(g) * kAmxKeyBlock];
      _tile_stored(0, sg, s_stride);
      _tile_stored(1, sg + 16, s_stride);
      _tile_stored(2, sg + 32, s_stride);
      _tile_stored(3, sg + 48, s_stride);
    }
    // Causal softmax per row in f32, then the probabilities as bf16 tiles of 32 keys (zeros past
    // the row's own position, so the keys it may not see add exact zeros).
    for (int r = 0; r < nt; ++r) {
      float* row = &s[static_cast<size_t>(r) * ld];
      const int valid = pos0 + r0 + r + 1;
      ScaledSoftmax(row, valid, scale);
      for (int js = 0; js < ksteps; ++js) {
        Bf16TileRow(row + js * 32, valid - js * 32, &pa[static_cast<size_t>(js) * 512 + r * 32]);
      }
    }
    // Outputs 64 dims at a time (32 for the last of d = 32 * odd): tiles 0-3 the 16-dim blocks,
    // 4 the probabilities, 5 and 6 the values.
    for (int c0 = 0; c0 < d; c0 += 64) {
      const bool four = d - c0 >= 64;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int js = 0; js < ksteps; ++js) {
        const uint16_t* vt = &kv.vt[(static_cast<size_t>(js) * dcols + c0 / 16) * 512];
        _tile_loadd(4, &pa[static_cast<size_t>(js) * 512], 64);
        _tile_loadd(5, vt, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, vt + 512, 64);
        _tile_dpbf16ps(1, 4, 6);
        if (four) {
          _tile_loadd(5, vt + 1024, 64);
          _tile_dpbf16ps(2, 4, 5);
          _tile_loadd(6, vt + 1536, 64);
          _tile_dpbf16ps(3, 4, 6);
        }
      }
      float* o = out + static_cast<size_t>(r0) * ldo + c0;
      const size_t o_stride = static_cast<size_t>(ldo) * sizeof(float);
      _tile_stored(0, o, o_stride);
      _tile_stored(1, o + 16, o_stride);
      if (four) {
        _tile_stored(2, o + 32, o_stride);
        _tile_stored(3, o + 48, o_stride);
      }
    }
  }
  _tile_release();
}

}  // namespace tpserve::kernels
