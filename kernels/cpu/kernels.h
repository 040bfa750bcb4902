// CPU kernels used by the engine. Activations are f32; weights are f32, f16 or bf16 and are
// widened to f32 in registers; every dot product accumulates in f32.
//
// Variants of the dot product (the only hot loop of batch-1 decode), one per ISA:
//   portable : plain C++, 8 independent accumulators (fixed order, so results are reproducible)
//   avx2     : AVX2 + FMA + F16C, 2x8 lanes
//   avx512   : AVX-512F/BW, 2x16 lanes, masked tail; dot4 loads each weight chunk once for
//              4 activation rows (batched decode / prefill), same per-row arithmetic as dot
// The table is filled once at start-up from a CPU feature probe (SelectIsa / ActiveKernels);
// TPSERVE_ISA=portable|avx2|avx512 forces a path (for tests and benchmarks). The element-wise,
// softmax and decode-attention loops (ops.cpp) are GCC target clones instead (AVX-512, Haswell's
// AVX2 + FMA for the attention, and the baseline), picked by the CPU at load time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/aligned.h"
#include "cpu/dtype.h"

namespace tpserve::kernels {

// dot(x, w) over k elements; x is f32, w is in the table entry's dtype.
using DotFn = float (*)(const float* x, const void* w, int k);
// out[j] = dot(x[j], w) for 4 activation rows sharing one weight row (loaded once). While it reads
// w it prefetches the same bytes of `next` (the weight row that follows; nullptr: none), so that a
// caller taking the rows in order finds the next one on its way. Each out[j] is bitwise equal to
// dot(x[j], w): batching never changes a token's result.
using Dot4Fn = void (*)(const float* const* x, const void* w, int k, float* out, const void* next);

// out[j] = dot(x, w + j * row_stride) for one activation row against kRows4 weight rows at a fixed
// stride (batch-1 decode: four weight streams in flight), each prefetched a fixed distance ahead
// in memory. As for RowsI8Fn, callers give each stream its own run of consecutive rows (row_stride
// = run length x row bytes), so the prefetches land in the stream's next row. Each out[j] is
// bitwise equal to dot(x, row j).
inline constexpr int kRows4 = 4;
using Rows4Fn = void (*)(const float* x, const void* w, size_t row_stride, int k, float* out);

// int8 weights meet activations quantized to int16 (one scale per activation row): the dot
// product is an exact integer, so every ISA path and every batch/thread split gives the same bits.
using DotI8Fn = int64_t (*)(const int16_t* x, const int8_t* w, int k);
// out[j] = dot_i8(x, w + j * row_stride) for kRowsI8 weight rows read side by side, each prefetched
// a fixed distance ahead in memory. Callers give each of the kRowsI8 streams its own run of
// consecutive rows (row_stride = run length x k), so a stream is long and its prefetches land in
// its next row: int8 rows are short (2 KB for k = 2048), and eight streams of one row each ended
// before the memory system reached full speed (~12 against ~19 GB/s per core). Four streams, not
// eight: on the Zen 5 VM (2 threads, perf/matvec_bench, alternated builds) eight read at 0.73-0.80
// of the packed bf16 kernel's rate, three or four at 0.85-1.10 (as the packed kernel, whose
// stream count is explained in dot_avx512_packed.cpp).
inline constexpr int kRowsI8 = 4;
using RowsI8Fn = void (*)(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out);
// Batches (several activation rows), straight to scaled outputs: y[t * ldy + j] = dot_i8(x + t *
// x_stride, w + j * row_stride) * x_scales[t] * row_scales[j] (in double, rounded to float: MatmulNT's
// int8 result) for `rows` activation rows (1 .. kI8BatchRows) against kI8BatchWeightRows weight rows,
// each weight step widened once per register tile of activation rows. The AVX-512 build prefetches assuming
// MatmulNT's order: consecutive rows (row_stride = k), the groups of weight rows taken in turn.
// MatmulNT takes it from kI8BatchMinRows activation rows on where the table has row streams
// (rows_i8: below that, decode reads the weights from memory, and four streams read them fastest),
// from 2 where it has not.
inline constexpr int kI8BatchRows = 48;
inline constexpr int kI8BatchWeightRows = 8;
inline constexpr int kI8BatchMinRows = 4;
using RowsI8BatchFn = void (*)(const int16_t* x, size_t x_stride, int rows, const float* x_scales,
                               const int8_t* w, size_t row_stride, const float* row_scales, int k, float* y,
                               size_t ldy);

// Packed bf16 weights (gemm.h: PackedBf16), the blocked layout of oneDNN's AMX and AVX512-BF16
// GEMM kernels: output rows in blocks of kPackedRows; inside a block, the k inputs (zero-padded
// to a multiple of kPackedKAlign) in pairs, each pair's two values of one output row adjacent:
//   w(o, c) is element ((c / 2) * kPackedRows + o % kPackedRows) * 2 + c % 2 of block o / 64.
// A block is one contiguous stream of kpad * 64 values, read front to back by the kernels below.
inline constexpr int kPackedRows = 64;
inline constexpr int kPackedKAlign = 32;
// Where w(o, c) sits inside its block (o % kPackedRows = j): the formula above.
inline size_t PackedIndex(int j, int c) {
  return (static_cast<size_t>(c / 2) * kPackedRows + j) * 2 + c % 2;
}
// y[r * ldy + j] = sum_c x(r, c) * w(j, c) for r < n, j < cols (<= 64), over one packed block:
// the few-row products (batch-1 decode). x: n rows of kpad f32 (zero-padded), row stride kpad;
// the weights are widened to f32 in registers, as the plain kernels do, so decode keeps f32
// activations (bf16 ones would turn the TP all-reduce's last-bit differences into bf16 rounding
// flips, and greedy tokens would then depend on the TP size).
using PackedBf16Fn = void (*)(const float* x, int n, int kpad, const uint16_t* block, float* y, int ldy,
                              int cols);
void PackedBf16Portable(const float* x, int n, int kpad, const uint16_t* block, float* y, int ldy, int cols);

// The same block product on AVX512-BF16 (VDPBF16PS), for 8 rows and more where the CPU has that
// instruction but no AMX (Bf16DotUsable): bf16 activations, f32 sums. x: n rows of kpad bf16
// (zero-padded; 4-byte aligned), row stride ldx (even, >= kpad; kBf16DotRowPad more than kpad keeps rows at a
// 4 KB stride out of one L1 set). Writes y's first `cols` columns of each row, nothing else.
inline constexpr int kBf16DotRowPad = 32;
bool Bf16DotUsable();
void PackedBf16Dot(const uint16_t* x, int ldx, int n, int kpad, const uint16_t* block, float* y, int ldy,
                   int cols);

// The same block product on AMX-BF16 tiles, for 8 rows and more (batched decode, where the
// AVX-512 FMAs cannot keep up with the weight stream, and prefill), with bf16 activations and f32
// sums; 32 rows per pass over the block. Only where AmxBf16Usable(): the CPU has AMX-BF16 and
// Linux granted this process the tile state (the first call asks for it). x comes from AmxTileActivations
// (into *out, resized, every element written; AVX512-BF16 rounding, denormals to zero): activation rows in
// groups of kAmxTileRows, each group as kpad / 32 dense tiles of kAmxTileRows x 32 bf16 (zeros past n and
// k), 64-byte aligned. Dense tiles, because a tile loaded from rows at a 4 KB stride (k =
// 2048) puts all 16 lines in one L1 set, more than its ways; aligned, because a tile row that straddles two
// cache lines made every tile load ~6x slower (a probe on this VM: ~20 against ~3 ns).
inline constexpr int kAmxTileRows = 16;
bool AmxBf16Usable();
// False where the environment says TPSERVE_AMX=0 (A/B benchmarks): every AMX path then stays off.
inline constexpr char kAmxSwitch[] = "TPSERVE_AMX";
bool AmxAllowedByEnvironment();
// int8 weights against int16 activations on AMX-INT8 (where AmxInt8Usable(): AMX-BF16's
// conditions and AMX-INT8): each activation split into its high (signed) and low (unsigned) byte,
// two exact int32 products per tile (|sums| < 2^31 for k < 2^16), recombined as 256 hi + lo in
// double (exact: |dot| < 2^53), so y is bitwise MatmulNT's int8 result: y[t * m + o] = dot(xq row t, w row o)
// * xs[t] * row_scales[o] (in double, rounded to float). For the first m / 32 * 32 output rows only, and k a
// multiple of kAmxInt8Step; the weights are read in place (row-major, m rows of k).
inline constexpr int kAmxInt8Step = 64;
inline constexpr int kAmxInt8MaxK = 1 << 16;  // the int32 sums' bound (255 x 128 x k < 2^31)
inline constexpr int kAmxInt8MinRows = 4;     // fewer rows: the row streams read faster
bool AmxInt8Usable();
void MatmulInt8Amx(const int16_t* xq, const float* xs, int n, const int8_t* w, const float* row_scales, int m,
                   int k, float* y);
void AmxTileActivations(const float* x, int n, int k, int kpad, AlignedVector<uint16_t>* out);
// PackedBf16Amx multiplies by nblocks consecutive blocks (from `blocks`) at once, so the tile
// configuration is loaded once per call, not per block, and the call prefetches its blocks ahead
// of the tiles; y: the first block's first output column, cols: the valid output columns from
// there (the last block may be partial).
void PackedBf16Amx(const uint16_t* x, int n, int kpad, const uint16_t* blocks, int nblocks, float* y, int ldy,
                   int cols);

// One KV head's keys and values, rounded to bf16, as the AMX B tiles of AttentionPrefillAmx, zeros past
// `keys` (padded to kAmxKeyBlock): kt holds per 16 keys and 32 dims the keys' dims in pairs (for S = Q K^T),
// vt per 32 keys and 16 dims the values in pairs of keys (for O = P V).
inline constexpr int kAmxKeyBlock = 64;
struct AmxKvTiles {
  AlignedVector<uint16_t> kt, vt;
  int keys = 0, d = 0;
};
// k, v: keys x d contiguous; d a multiple of 32 (AmxAttentionSupports).
void PrepareAmxKv(const float* k, const float* v, int keys, int d, AmxKvTiles* out);
// The same from a paged cache: key j's row is row j % block_size of k_blocks[j / block_size] (rows
// of d elements of `dtype`, f32 or bf16; a bf16 cache's bits are taken as they are), likewise v.
// Only rows j < keys are read (a last block's other rows may hold anything).
void PrepareAmxKv(const void* const* k_blocks, const void* const* v_blocks, DType dtype, int block_size,
                  int keys, int d, AmxKvTiles* out);
inline bool AmxAttentionSupports(int d) {
  return d > 0 && d % 32 == 0;
}
// AttentionPrefill (gemm.h) on AMX-BF16 tiles, only where AmxBf16Usable(), 16 query rows at a time:
// queries, keys, values and probabilities rounded to bf16 (queries' and probabilities' denormals to
// zero: AVX512-BF16), scores, softmax and sums in f32. kv from PrepareAmxKv over pos0 + rows keys or more.
// A row's result depends only on its own query, position and the keys before it (for finite values:
// it multiplies later keys' values by exact zeros), not on the rows sharing its call: a prompt
// prefilled in chunks gets the same bits.
void AttentionPrefillAmx(const float* q, int ldq, int rows, int pos0, const AmxKvTiles& kv, float scale,
                         float* out, int ldo);

struct CpuKernelTable {
  const char* isa = "portable";
  DotFn dot[kNumDTypes] = {};      // indexed by DType (float dtypes)
  Dot4Fn dot4[kNumDTypes] = {};    // indexed by DType (float dtypes)
  Rows4Fn rows4[kNumDTypes] = {};  // indexed by DType; nullptr: dot per row
  DotI8Fn dot_i8 = nullptr;
  RowsI8Fn rows_i8 = nullptr;             // nullptr: dot_i8 per row
  RowsI8BatchFn rows_i8_batch = nullptr;  // nullptr: rows_i8 (or dot_i8) per activation row
  bool amx_int8 = false;                  // batches through MatmulInt8Amx (AmxInt8Usable())
  PackedBf16Fn packed_bf16 = PackedBf16Portable;
};

const CpuKernelTable& PortableKernels();
const CpuKernelTable* Avx2Kernels();    // nullptr when not compiled in
const CpuKernelTable* Avx512Kernels();  // nullptr when not compiled in
// Avx512Kernels() with the int8 kernels' plain AVX-512 build (vpmaddwd + vpaddd) even where the
// CPU has VNNI, so that tests cover both builds on one machine; nullptr where the CPU lacks AVX-512.
const CpuKernelTable* Avx512KernelsWithoutVnni();

// ISA names this CPU can run, best first (always ends with "portable").
std::vector<std::string> SupportedIsas();
// The kernels chosen at start-up (best supported ISA, or TPSERVE_ISA when set and supported).
const CpuKernelTable& ActiveKernels();
// Table for a named ISA, or nullptr if unknown/unsupported on this CPU.
const CpuKernelTable* KernelsForIsa(const std::string& isa);

// y(n, m) = x(n, k) * w(m, k)^T with w in dtype wt. Row-major, dense. Weight-stationary: each
// weight row is read once for all n rows (4 at a time through dot4, or 4 weight rows at a time
// through rows4 when n < 4), and every y element is bitwise what a batch of one would give, at
// any thread count (the threads take the weight rows in turns). int8 weights need row_scales (m floats):
// y = row_scale * x_scale * (exact integer dot of the int16-quantized x row with the int8 row).
void MatmulNT(const CpuKernelTable& kt, const float* x, int n, const void* w, DType wt, int m, int k,
              float* y, const float* row_scales = nullptr);
inline void MatmulNT(const float* x, int n, const void* w, DType wt, int m, int k, float* y,
                     const float* row_scales = nullptr) {
  MatmulNT(ActiveKernels(), x, n, w, wt, m, k, y, row_scales);
}

// y(n) = x(n) / rms(x) * weight(n), rms = sqrt(mean(x^2) + eps). x and y may alias.
void RmsNorm(const float* x, const float* weight, int n, float eps, float* y);

// x(n) += add(n), element by element.
void AddInPlace(float* x, const float* add, int n);

// Rotary embedding, rotate-half (HF Llama) convention, in place on one head vector:
//   for i < d/2: (x[i], x[i+d/2]) <- (x[i] c - x[i+d/2] s, x[i+d/2] c + x[i] s), c,s =
//   cos,sin(pos*inv_freq[i])
// cos_sin: (d/2) cos values followed by (d/2) sin values for this position.
void RopeRotateHalf(float* x, int head_dim, const float* cos_sin);

// x[i] = exp(x[i] - shift) for i < n, returning their sum (softmax). exp is a vectorized
// polynomial (relative error within a few ulp); exp of anything below -87 is 0.
float ExpShiftedSum(float* x, int n, float shift);

// x = softmax(scale * x) over n values, in place: max-subtracted, exp as in ExpShiftedSum. The
// attention kernels' softmax (per query over its keys).
void ScaledSoftmax(float* x, int n, float scale);

// First index of the largest of x[0..n) (ties -> lowest index; NaNs never win); 0 when no value
// exceeds -infinity, unless one equals it (then the first such). Greedy sampling over the logits.
int ArgMax(const float* x, int n);

// out(n) = silu(gate) * up, silu(g) = g / (1 + exp(-g)), exp as in ExpShiftedSum.
void SiluMul(const float* gate, const float* up, int n, float* out);

// Causal attention of one query head against the first npos cached keys/values of its KV head,
// stored in fixed-size blocks (a paged KV cache): block b holds positions
// [b * block_size, (b + 1) * block_size) as block_size rows of d floats.
//   q: (d)   k_blocks[b], v_blocks[b]: (block_size, d)   out: (d)
//   scratch: AttentionScratchFloats(1, npos, d) floats
// Softmax is max-subtracted; scale = 1/sqrt(d) is passed in. A contiguous cache is one block.
// A head's output is bitwise the same whatever the block size and whatever heads share its call.
void AttentionHead(const float* q, const float* const* k_blocks, const float* const* v_blocks, int npos,
                   int block_size, int d, float scale, float* scratch, float* out);

// AttentionHead for the g query heads q[0..g) that share one KV head (grouped-query attention),
// out[h] = AttentionHead(q[h], ...) bitwise: each key and value block is read from memory once for
// the group. scratch: AttentionScratchFloats(g, npos, d) floats.
void AttentionHeads(const float* const* q, int g, const float* const* k_blocks, const float* const* v_blocks,
                    int npos, int block_size, int d, float scale, float* scratch, float* const* out);
// The same over a bf16 KV cache: each key and value widened to f32 as it is read, then the same
// operations, so the result is bitwise AttentionHeads over the widened f32 values.
void AttentionHeads(const float* const* q, int g, const uint16_t* const* k_blocks,
                    const uint16_t* const* v_blocks, int npos, int block_size, int d, float scale,
                    float* scratch, float* const* out);
size_t AttentionScratchFloats(int g, int npos, int d);

}  // namespace tpserve::kernels
