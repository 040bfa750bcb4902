// The packed bf16 block product on AMX-BF16 tiles (kernels.h: PackedBf16Amx). The packed layout
// is the AMX B-operand layout: one pair row of a block (256 bytes) holds 64 output rows x 2
// inputs, so a 16-pair x 16-output tile is 16 loads of 64 bytes at a 256-byte stride.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cpuid.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/amx_tile_config.h"
#include "cpu/dtype.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace tpserve::kernels {
namespace {

// Linux hands out the 8 KB tile state only to processes that ask for it (arch_prctl).
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

bool ProbeAmx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  if (!amx_bf16 || !amx_tile) return false;
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

// rows (<= 16) activation rows, as one group of AmxTileActivations, x one block: sums into c
// (rows x 64 f32, row stride ldc); the tiles configured by RowsConfig(rows). Each 32-input step
// loads the activation tile and the four weight tiles (two tile registers in turn) for the four
// products. Single-threaded on the 2-core VM, at 16 rows, it reads weights from memory at about
// the rate of one stream of plain loads (8-10 GB/s; matvec_bench --threads 1: the 1-row kernel's
// eight streams read ~16): tile loads that miss L1 wait, and neither more streams per block nor
// prefetching further ahead raised it. Tile numbers are immediates in the intrinsics, hence the
// spelled-out code.
void BlockRows(const uint16_t* x, int kpad, const uint16_t* block, float* c, int ldc,
               NextBlockPrefetch& next) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int kk = 0; kk < kpad; kk += 32) {
    const uint16_t* w = block + static_cast<size_t>(kk / 2) * 2 * kPackedRows;  // pairs kk / 2 ..
    const char* ahead = reinterpret_cast<const char*>(w) + kPrefetchSteps * kStepBytes;
    for (int l = 0; l < kStepBytes; l += 64) _mm_prefetch(ahead + l, _MM_HINT_T1);
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
// read it twice). `next` brings the following block to L2 meanwhile (batches over 32 rows), as in
// BlockRows.
void BlockRows32(const uint16_t* x, int kpad, const uint16_t* block, float* c, int ldc,
                 NextBlockPrefetch& next) {
  const uint16_t* x1 = x + static_cast<size_t>(kAmxTileRows) * kpad;
  for (int half = 0; half < 2; ++half) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int kk = 0; kk < kpad; kk += 32) {
      const uint16_t* w = block + static_cast<size_t>(kk / 2) * 2 * kPackedRows + 64 * half;
      const char* ahead = reinterpret_cast<const char*>(w) + kPrefetchSteps * kStepBytes;
      for (int l = 0; l < kStepBytes; l += 256) {
        _mm_prefetch(ahead + l, _MM_HINT_T1);
        _mm_prefetch(ahead + l + 64, _MM_HINT_T1);
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

}  // namespace

bool AmxBf16Usable() {
  static const bool usable = ProbeAmx();
  return usable;
}

AlignedVector<uint16_t> AmxTileActivations(const float* x, int n, int k, int kpad) {
  const int groups = (n + kAmxTileRows - 1) / kAmxTileRows;
  AlignedVector<uint16_t> out(static_cast<size_t>(groups) * kAmxTileRows * kpad, 0);
  ParallelFor(n, 1, [&](int t0, int t1) {
    std::vector<uint16_t> row(kpad, 0);
    for (int t = t0; t < t1; ++t) {
      ConvertDType(x + static_cast<size_t>(t) * k, DType::kF32, row.data(), DType::kBF16, k);
      uint16_t* group = &out[static_cast<size_t>(t / kAmxTileRows) * kAmxTileRows * kpad];
      for (int kk = 0; kk < kpad; kk += 32) {
        std::memcpy(group + static_cast<size_t>(kk) * kAmxTileRows + (t % kAmxTileRows) * 32, &row[kk], 64);
      }
    }
  });
  return out;
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
  for (int b = 0; b < nblocks; ++b) {
    const uint16_t* block = blocks + static_cast<size_t>(b) * kpad * kPackedRows;
    NextBlockPrefetch next;
    if (n > 2 * kAmxTileRows && b + 1 < nblocks) {
      next.at = reinterpret_cast<const char*>(block) + block_bytes;
      next.end = next.at + block_bytes;
      next.per_step = static_cast<int>((block_bytes / 64 + steps_per_block - 1) / steps_per_block);
    }
    float* yb = y + static_cast<size_t>(b) * kPackedRows;
    const int valid = std::min(kPackedRows, cols - b * kPackedRows);
    for (int r0 = 0; r0 < n; r0 += 2 * kAmxTileRows) {
      const int rows = std::min(n - r0, 2 * kAmxTileRows);
      const uint16_t* xg = x + static_cast<size_t>(r0) * kpad;
      // A full block's tiles go straight into y; a partial one's through `part`.
      float* c = valid == kPackedRows ? yb + static_cast<size_t>(r0) * ldy : part;
      const int ldc = valid == kPackedRows ? ldy : kPackedRows;
      Configure(rows, &loaded);
      if (rows > kAmxTileRows) {
        BlockRows32(xg, kpad, block, c, ldc, next);
      } else {
        BlockRows(xg, kpad, block, c, ldc, next);
      }
      if (c == part) {
        for (int r = 0; r < rows; ++r)
          std::memcpy(yb + static_cast<size_t>(r0 + r) * ldy, part + r * kPackedRows, valid * sizeof(float));
      }
    }
  }
  _tile_release();
}

}  // namespace tpserve::kernels
