// Matrix-matrix products through oneDNN (its brgemm kernels: AMX-BF16 on Sapphire Rapids and
// later, AVX-512 otherwise, picked by oneDNN at run time). Used where many activation rows share
// one weight matrix (prefill, batched decode) and for prefill attention; batch-1 decode keeps the
// weight-streaming dot kernels (kernels.h), which run at the memory-bandwidth roofline.
//
// These products are not batch-invariant (the library's blocking, and for bf16 the activations'
// rounding to bf16, depend on the shape), so --enable-deterministic-inference never uses them.
#pragma once

#include <cstdint>
#include <memory>

#include "cpu/dtype.h"
#include "cpu/kernels.h"
#include "cpu/large_buffer.h"

namespace tpserve::kernels {

// Fewer activation rows than this go to the dot kernels: below it they are as fast (perf/gemm_bench).
inline constexpr int kGemmMinRows = 8;

// Whether GemmNT handles weights of this dtype (f32; bf16 with activations rounded to bf16).
bool GemmSupports(DType wt);

// y(n, m) = x(n, k) * w(m, k)^T, w row-major in dtype wt (GemmSupports(wt) must hold), y with row
// stride ldy (>= m). Threads of the kernel pool split the weight rows; each runs the library
// single-threaded on its slice.
void GemmNT(const float* x, int n, const void* w, DType wt, int m, int k, float* y, int ldy);

// Single-threaded f32 products for use inside a ParallelFor body (strides in elements):
//   y(n, m) = x(n, k) * w(m, k)^T    (w rows of stride ldw)
//   y(n, m) = x(n, k) * w(k, m)      (w rows of stride ldw)
void GemmNTSerial(const float* x, int ldx, int n, const float* w, int ldw, int m, int k, float* y, int ldy);
void GemmNNSerial(const float* x, int ldx, int n, const float* w, int ldw, int m, int k, float* y, int ldy);

// The engine's matmul: GemmNT for kGemmMinRows or more rows in a dtype it supports, unless
// batch_invariant is set; MatmulNT (kernels.h) otherwise. Arguments as MatmulNT's.
void Matmul(const float* x, int n, const void* w, DType wt, int m, int k, float* y, const float* row_scales,
            bool batch_invariant);

// A bf16 weight matrix w(m, k) held in the blocked layout of this CPU's oneDNN bf16 kernels
// (kernels.h: kPackedRows), packed once at load. The library then reads it as it is instead of
// repacking every weight slice on every call (which cost a 16-row step ~3x a batch-1 step), and
// few-row products run PackedBf16Fn over the same bytes, so one copy serves every batch size.
// As with plain bf16 weights, the GEMM rounds activations to bf16 and the few-row kernel keeps them f32.
class PackedBf16 {
 public:
  // w packed (w: m rows of k bf16), or nullptr where this CPU's kernels use another layout or the
  // CPU lacks AVX512-BF16: the caller keeps the plain matrix then.
  static std::unique_ptr<PackedBf16> Pack(const uint16_t* w, int m, int k);
  // Writes the plain matrix back (m rows of k bf16), bitwise what was packed.
  void Unpack(uint16_t* w) const;
  // Writes row o alone (k bf16).
  void UnpackRow(int o, uint16_t* row) const;

  int rows() const { return m_; }
  int cols() const { return k_; }
  int padded_cols() const { return kpad_; }  // k rounded up to kPackedKAlign
  int blocks() const { return (m_ + kPackedRows - 1) / kPackedRows; }
  const uint16_t* block(int b) const {
    return data_.as<uint16_t>() + static_cast<size_t>(b) * kpad_ * kPackedRows;
  }
  size_t bytes() const { return static_cast<size_t>(blocks()) * kpad_ * kPackedRows * sizeof(uint16_t); }

 private:
  PackedBf16(int m, int k, int kpad);
  int m_, k_, kpad_;
  LargeBuffer data_;  // on huge pages where the kernel offers them
};

// y(n, m) = x(n, k) * w^T for packed w, y dense (n, m): PackedBf16Fn below kGemmMinRows rows;
// from there PackedBf16Amx where AMX is on (UseAmxForPackedGemm), else up to kBf16DotMaxRows rows
// PackedBf16Dot where the CPU has AVX512-BF16 (UseBf16DotForPackedGemm), else oneDNN. Threads of
// the kernel pool split the blocks. From kGemmMinRows rows on, activations are rounded to bf16.
// Our AMX kernel against oneDNN 2.6's on the 2-core VM: 16-64 rows (batched decode) stream the
// weights 1.3-2x as fast (perf/matvec_bench --rows), a 512-token prefill runs ~8% faster.
void MatmulPacked(const float* x, int n, const PackedBf16& w, float* y);
// Whether MatmulPacked takes PackedBf16Amx (never where !AmxBf16Usable()), and with it prefill
// attention AttentionPrefillAmx (kernels.h). On by default, unless the environment says
// TPSERVE_AMX=0 (A/B benchmarks; 8-32 rows then go to PackedBf16Dot, unless TPSERVE_BF16_DOT=0
// too); tests switch it to cover every path.
void UseAmxForPackedGemm(bool on);
bool AmxForPackedGemm();
// Whether MatmulPacked takes PackedBf16Dot where AMX is off (never where !Bf16DotUsable()): on by
// default, unless the environment says TPSERVE_BF16_DOT=0 (then oneDNN's GEMM).
void UseBf16DotForPackedGemm(bool on);
bool Bf16DotForPackedGemm();
// Batched decode: on the Zen 5 VM (no AMX), 16 rows at TP 2's `small` shapes, one thread, read
// the weights 1.1-1.35x as fast through PackedBf16Dot as through oneDNN; 32 rows alike; from 64
// rows on (prefill) oneDNN is ahead (512 rows: ~650-700 against ~540 GFLOP/s, 2 threads).
inline constexpr int kBf16DotMaxRows = 32;
// Which kernels take batches (8+ rows) of packed bf16 weights in this process, for logs and
// `tpserve doctor`: "amx-bf16", "avx512-bf16 to 32 rows, then onednn" or "onednn".
const char* PackedBatchKernels();

inline constexpr int kAttentionTileRows = 64;

// Causal attention of `rows` consecutive positions pos0 .. pos0 + rows - 1 of one sequence and one
// query head, single-threaded (callers split the heads over the pool):
//   q: rows x d (row stride ldq)   k, v: (pos0 + rows) x d contiguous   out: rows x d (stride ldo)
// Scores and probabilities go through two GEMMs per tile of query rows; a tile reads only the keys
// up to its last position. scratch: at least kAttentionTileRows * (pos0 + rows) floats.
void AttentionPrefill(const float* q, int ldq, int rows, int pos0, const float* k, const float* v, int d,
                      float scale, float* out, int ldo, float* scratch);

}  // namespace tpserve::kernels
