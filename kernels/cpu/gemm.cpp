#include "cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

#include "cpu/aligned.h"
#include "cpu/env_switch.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace tpserve::kernels {
namespace {

using dnnl::memory;
using Dt = memory::data_type;

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Everything that fixes a primitive: oneDNN compiles one kernel per shape and layout.
struct Shape {
  int n, m, k, ldx, ldw, ldy;
  bool w_transposed;  // w is (m, k) rows (NT) rather than (k, m) rows (NN)
  Dt src, wei;
  bool w_packed = false;  // w is a PackedBf16 slice of m rows (ldw and w_transposed unused)
  auto key() const { return std::tie(n, m, k, ldx, ldw, ldy, w_transposed, src, wei, w_packed); }
  bool operator<(const Shape& o) const { return key() < o.key(); }
};

// Per calling thread: the library's OpenMP side stays single-threaded (our pool owns the cores),
// and each thread keeps its own stream and compiled primitives.
struct ThreadState {
  ThreadState() : stream(Engine()) { omp_set_num_threads(1); }
  dnnl::stream stream;
  std::map<Shape, dnnl::matmul> cache;
};
ThreadState& State() {
  thread_local ThreadState state;
  return state;
}

int RoundUp(int v, int to) {
  return (v + to - 1) / to * to;
}

// The packed layout of kernels.h (kPackedRows) as a oneDNN descriptor of the (k, m) weights: k in
// blocks of 32 (16 pairs), m in blocks of 64, a pair innermost. PackedBf16::Pack checks that it
// is the layout the library itself picks before using it.
memory::desc PackedDesc(int m, int k) {
  dnnl_memory_desc_t d{};
  d.ndims = 2;
  d.dims[0] = k;
  d.dims[1] = m;
  d.data_type = dnnl_bf16;
  d.padded_dims[0] = RoundUp(k, kPackedKAlign);
  d.padded_dims[1] = RoundUp(m, kPackedRows);
  d.format_kind = dnnl_blocked;
  dnnl_blocking_desc_t& b = d.format_desc.blocking;
  b.strides[0] = kPackedKAlign * kPackedRows;
  b.strides[1] = d.padded_dims[0] * kPackedRows;
  b.inner_nblks = 3;
  b.inner_blks[0] = kPackedKAlign / 2, b.inner_idxs[0] = 0;
  b.inner_blks[1] = kPackedRows, b.inner_idxs[1] = 1;
  b.inner_blks[2] = 2, b.inner_idxs[2] = 0;
  return memory::desc(d);
}

// The three operands' layouts of a shape (strides in elements).
memory::desc SrcDesc(const Shape& s) {
  return {{s.n, s.k}, s.src, {s.ldx, 1}};
}
memory::desc WeiDesc(const Shape& s) {
  if (s.w_packed) return PackedDesc(s.m, s.k);
  return {{s.k, s.m}, s.wei, s.w_transposed ? memory::dims{1, s.ldw} : memory::dims{s.ldw, 1}};
}
memory::desc DstDesc(const Shape& s) {
  return {{s.n, s.m}, Dt::f32, {s.ldy, 1}};
}

dnnl::matmul& Primitive(ThreadState& st, const Shape& s) {
  auto it = st.cache.find(s);
  if (it != st.cache.end()) return it->second;
  // Serving sees many batch sizes; a bounded cache keeps memory flat (oneDNN's own primitive
  // cache still avoids recompiling a recently seen shape).
  if (st.cache.size() >= 512) st.cache.clear();
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(SrcDesc(s), WeiDesc(s), DstDesc(s)), Engine());
  // The library's reference loop is correct but orders of magnitude slower: say so once.
  static std::atomic<bool> warned{false};
  if (std::strncmp(pd.impl_info_str(), "ref", 3) == 0 && !warned.exchange(true)) {
    std::fprintf(stderr, "tpserve: warning: oneDNN runs a %dx%dx%d matmul with its slow reference kernel\n",
                 s.n, s.m, s.k);
  }
  return st.cache.emplace(s, dnnl::matmul(pd)).first->second;
}

void Run(const Shape& s, const void* x, const void* w, float* y) {
  try {
    ThreadState& st = State();
    dnnl::matmul& mm = Primitive(st, s);
    const auto& e = Engine();
    memory xm(SrcDesc(s), e, const_cast<void*>(x)), wm(WeiDesc(s), e, const_cast<void*>(w)),
        ym(DstDesc(s), e, y);
    mm.execute(st.stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
    st.stream.wait();
  } catch (const dnnl::error& err) {
    // Only a bug can get here (shapes and dtypes are checked by the callers); there is no caller
    // to return to inside a pool thread.
    std::fprintf(stderr, "tpserve: oneDNN matmul %dx%dx%d failed: %s\n", s.n, s.m, s.k, err.what());
    std::abort();
  }
}

// Run with y a column block of a matrix of row stride ldy: oneDNN 2.6's brgemm kernels (AMX and
// AVX512-BF16) take only a dense destination, and with a strided one it falls back to kernels
// that repack the weights on every call (or, for packed weights, to its reference loop). So the
// slice goes to a dense per-thread buffer, then into place.
void RunDenseOut(Shape s, const void* x, const void* w, float* y, int ldy) {
  if (ldy == s.m) return Run(s, x, w, y);
  thread_local AlignedVector<float> dense;
  dense.resize(static_cast<size_t>(s.n) * s.m);
  s.ldy = s.m;
  Run(s, x, w, dense.data());
  for (int r = 0; r < s.n; ++r) {
    std::copy_n(&dense[static_cast<size_t>(r) * s.m], s.m, y + static_cast<size_t>(r) * ldy);
  }
}

// x(n, k) rounded to bf16 rows of stride ld (>= k; the padding columns are zero).
AlignedVector<uint16_t> ToBf16Rows(const float* x, int n, int k, int ld) {
  AlignedVector<uint16_t> out(static_cast<size_t>(n) * ld, 0);
  ParallelFor(n, 1, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
      ConvertDType(x + static_cast<size_t>(r) * k, DType::kF32, &out[static_cast<size_t>(r) * ld],
                   DType::kBF16, k);
    }
  });
  return out;
}

// Weight rows go out in slices of 64 (a multiple of every kernel's register block, and the packed
// block) so the split is even, and each library call takes at most ~1 MB of weights: that part
// stays in L2 while all n activation rows stream past it, so the weights are read from memory
// once. call(o0, o1) runs rows [o0, o1).
constexpr int kSlice = kPackedRows;  // so slices of packed weights start on a block
int SliceBlocks(int k, size_t esize) {
  return std::max(1, static_cast<int>((size_t{1} << 20) / (static_cast<size_t>(k) * esize * kSlice)));
}
template <typename Call>
void ForWeightSlices(int m, int k, size_t esize, const Call& call) {
  const int per_call = SliceBlocks(k, esize);
  ParallelFor((m + kSlice - 1) / kSlice, 1, [&](int b0, int b1) {
    for (int b = b0; b < b1; b += per_call) {
      call(b * kSlice, std::min({m, b1 * kSlice, (b + per_call) * kSlice}));
    }
  });
}

}  // namespace

bool GemmSupports(DType wt) {
  return wt == DType::kF32 || wt == DType::kBF16;
}

void GemmNT(const float* x, int n, const void* w, DType wt, int m, int k, float* y, int ldy) {
  const void* src = x;
  AlignedVector<uint16_t> x_bf16;
  if (wt == DType::kBF16) {  // the bf16 kernels take bf16 activations
    x_bf16 = ToBf16Rows(x, n, k, k);
    src = x_bf16.data();
  }
  const Dt dt = wt == DType::kBF16 ? Dt::bf16 : Dt::f32;
  const size_t esize = DTypeSize(wt);
  ForWeightSlices(m, k, esize, [&](int o0, int o1) {
    const Shape s{n, o1 - o0, k, k, k, ldy, true, dt, dt};
    RunDenseOut(s, src, static_cast<const char*>(w) + static_cast<size_t>(o0) * k * esize, y + o0, ldy);
  });
}

PackedBf16::PackedBf16(int m, int k, int kpad) : m_(m), k_(k), kpad_(kpad), data_(bytes()) {
  if (data_.data() == nullptr) {
    std::fprintf(stderr, "tpserve: out of memory packing a %dx%d bf16 matrix\n", m, k);
    std::abort();
  }
}

namespace {

// Whether oneDNN picks exactly PackedDesc for these weights when left free to choose, at a few
// row counts (its kernel choice changes with them), single-threaded as in the calls (its choice
// changes with the thread count too).
bool LibraryUsesPackedLayout(int m, int k) {
  State();
  for (const int n : {kGemmMinRows, 64, 512}) {
    const memory::desc src({n, k}, Dt::bf16, memory::format_tag::ab);
    const memory::desc any({k, m}, Dt::bf16, memory::format_tag::any);
    const memory::desc dst({n, m}, Dt::f32, memory::format_tag::ab);
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, any, dst), Engine());
      if (!(pd.weights_desc() == PackedDesc(m, k))) return false;
    } catch (const dnnl::error&) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::unique_ptr<PackedBf16> PackedBf16::Pack(const uint16_t* w, int m, int k) {
  if (m <= 0 || k <= 0 || !__builtin_cpu_supports("avx512bf16")) return nullptr;
  // The slice sizes the calls will use: one block, a full slice, and the last partial block.
  const int full = std::min(m, kPackedRows * SliceBlocks(k, sizeof(uint16_t)));
  for (const int rows : {std::min(m, kPackedRows), full, m % kPackedRows}) {
    if (rows > 0 && !LibraryUsesPackedLayout(rows, k)) return nullptr;
  }
  std::unique_ptr<PackedBf16> p(new PackedBf16(m, k, RoundUp(k, kPackedKAlign)));
  const int kpad = p->kpad_;
  ParallelFor(p->blocks(), 1, [&](int b0, int b1) {
    for (int b = b0; b < b1; ++b) {
      uint16_t* dst = const_cast<uint16_t*>(p->block(b));
      const int rows = std::min(kPackedRows, m - b * kPackedRows);
      if (rows < kPackedRows || kpad != k)
        std::fill(dst, dst + static_cast<size_t>(kpad) * kPackedRows, uint16_t{0});
      const uint16_t* first = w + static_cast<size_t>(b) * kPackedRows * k;
      // 16 pairs (one cache line of a row) at a time: each row's line is read once, and the 16
      // output lines (4 KB) being filled stay in L1 (pair by pair, every 4-byte read would touch
      // another row's page; row by row, every write another line).
      constexpr int kGroup = 16;
      for (int c0 = 0; c0 + 1 < k; c0 += 2 * kGroup) {
        const int pairs = std::min(kGroup, (k - c0) / 2);
        for (int j = 0; j < rows; ++j) {
          const uint16_t* in = first + static_cast<size_t>(j) * k + c0;
          for (int q = 0; q < pairs; ++q) {
            std::memcpy(dst + PackedIndex(j, c0 + 2 * q), in + 2 * q, 4);  // one pair
          }
        }
      }
      if (k % 2 != 0) {  // the last input alone in its pair (the other half stays zero)
        for (int j = 0; j < rows; ++j) dst[PackedIndex(j, k - 1)] = first[static_cast<size_t>(j) * k + k - 1];
      }
    }
  });
  return p;
}

void PackedBf16::UnpackRow(int o, uint16_t* row) const {
  const uint16_t* src = block(o / kPackedRows);
  const int j = o % kPackedRows;
  for (int c = 0; c < k_; ++c) row[c] = src[PackedIndex(j, c)];
}

void PackedBf16::Unpack(uint16_t* w) const {
  ParallelFor(m_, kPackedRows, [&](int o0, int o1) {
    for (int o = o0; o < o1; ++o) UnpackRow(o, w + static_cast<size_t>(o) * k_);
  });
}

namespace {
// A batched kernel for packed bf16 that is on where the CPU has it, unless an environment
// variable says 0 (A/B benchmarks); tests switch it to cover every path.
class KernelSwitch {
 public:
  constexpr KernelSwitch(const char* env, bool (*usable)()) : env_(env), usable_(usable) {}
  bool on() {
    int v = state_.load(std::memory_order_relaxed);
    if (v < 0) {
      const int want = EnvSwitchOn(env_) && usable_() ? 1 : 0;
      v = state_.compare_exchange_strong(v, want) ? want : v;  // a Set that raced with this first use wins
    }
    return v == 1;
  }
  void Set(bool on) { state_.store(on && usable_() ? 1 : 0); }

 private:
  const char* env_;
  bool (*usable_)();
  std::atomic<int> state_{-1};  // -1: not decided yet (on first use: the environment, the CPU)
};
constinit KernelSwitch g_amx_packed(kAmxSwitch, AmxBf16Usable);
constinit KernelSwitch g_dot_packed("TPSERVE_BF16_DOT", Bf16DotUsable);

// Blocks per turn when the pool's threads take a matrix's blocks in turns (ParallelForDynamic):
// about eight turns per thread, but `keep` blocks or more where each thread still gets two turns.
int BlocksPerTurn(int blocks, int keep) {
  const int threads = NumThreads();
  return std::max((blocks + 8 * threads - 1) / (8 * threads),
                  std::min(keep, std::max(1, blocks / (2 * threads))));
}
}  // namespace

bool AmxForPackedGemm() {
  return g_amx_packed.on();
}
void UseAmxForPackedGemm(bool on) {
  g_amx_packed.Set(on);
}
bool Bf16DotForPackedGemm() {
  return g_dot_packed.on();
}
void UseBf16DotForPackedGemm(bool on) {
  g_dot_packed.Set(on);
}
const char* PackedBatchKernels() {
  if (AmxForPackedGemm()) return "amx-bf16";
  return Bf16DotForPackedGemm() ? "avx512-bf16 to 32 rows, then onednn" : "onednn";
}

// Whole blocks of the packed weights go to each thread of the pool, both in the AMX and the
// few-row paths below; each writes y's columns of its blocks.
void MatmulPacked(const float* x, int n, const PackedBf16& w, float* y) {
  const int m = w.rows(), k = w.cols(), kpad = w.padded_cols();
  if (n >= kGemmMinRows && AmxForPackedGemm()) {
    // The calling thread's buffer, kept between calls; named through a reference, since the pool
    // threads that read it inside the lambdas below have thread_locals of their own.
    thread_local AlignedVector<uint16_t> activations;
    AlignedVector<uint16_t>& xb = activations;
    AmxTileActivations(x, n, k, kpad, &xb);
    // A large batch goes through the weights in row chunks whose activations (~1 MB of bf16)
    // stay in L2 while every block passes; otherwise each block streams all of them again. Each
    // chunk re-reads the weights, so chunks keep about 256 rows or more (none at k > 2048) and
    // the rows are split evenly. (One thread, 512 rows, this VM: m 5632 x k 2048 rose ~505-520 ->
    // 585-635 GFLOP/s with chunks of 256 rows; m 2048 x k 5632 fell ~500 -> ~340 with chunks of
    // 64, ~440 with 256.)
    constexpr size_t kChunkBytes = size_t{1} << 20;
    constexpr int kMinChunkRows = 256;
    const int group = 2 * kAmxTileRows;
    const int fit = static_cast<int>(kChunkBytes / (kpad * sizeof(uint16_t))) / group * group;
    const int chunks = fit < kMinChunkRows ? 1 : std::max(1, n / fit);
    // Chunk c starts at c / chunks of the rows, rounded down to a row group (AmxTileActivations'
    // layout), so the chunks differ by at most a group.
    auto edge = [&](int c) {
      return c == chunks ? n : static_cast<int>(int64_t{n} * c / chunks) / group * group;
    };
    // The threads take the blocks a few at a time (about eight turns each) rather than a fixed
    // half: on this VM one core's AMX throughput sometimes drops well below the other's for a
    // while (a 512-token prefill profile once had the worker 2.3x longer in the kernel than the
    // main thread for the same blocks), and a fixed split then waits for the slow one.
    // A turn keeps at least four blocks where each thread still gets two turns: each call loads
    // the tile configuration once and prefetches its next block only within its own.
    const int turn = BlocksPerTurn(w.blocks(), 4);
    for (int c = 0; c < chunks; ++c) {
      const int r0 = edge(c), rows = edge(c + 1) - r0;
      ParallelForDynamic(w.blocks(), turn, [&](int b0, int b1) {
        const int o0 = b0 * kPackedRows;
        PackedBf16Amx(xb.data() + static_cast<size_t>(r0) * kpad, rows, kpad, w.block(b0), b1 - b0,
                      y + static_cast<size_t>(r0) * m + o0, m, m - o0);
      });
    }
    return;
  }
  // The other paths call their kernel once per block, block(b, its first output row, its valid
  // rows), the threads taking the blocks in turns (as in the AMX path above). Below kGemmMinRows
  // rows a turn is one block: these kernels need no set-up per call, and a thread done early waits
  // at most one block for the other. (Zen 5 VM, 2 threads, batch-1 decode of the bench-1b matrices
  // against a plain read of the same bytes, 20 interleaved rounds: 0.95-0.97 of it with turns of 1
  // or 2 blocks, 0.91-0.93 with about eight turns per thread.) The 8-32 row kernel is compute-bound
  // (~2.5 us for 16 rows of a `small` block), so there the turns are BlocksPerTurn's, as the AMX
  // path's (about eight per thread, at least four blocks where each thread still gets two), and
  // the threads meet at the shared turn counter and at neighbouring outputs less often: a
  // 16-sequence decode step of `small` at TP 1 x 2 threads took 3.2-3.5 ms against 4.1-4.2 with
  // single-block turns (a floor of 2 or 8 blocks instead of 4: within 3 %).
  auto for_blocks_in_turns = [&](const auto& block) {
    const int turn = n >= kGemmMinRows ? BlocksPerTurn(w.blocks(), 4) : 1;
    ParallelForDynamic(w.blocks(), turn, [&](int b0, int b1) {
      for (int b = b0; b < b1; ++b) block(b, b * kPackedRows, std::min(kPackedRows, m - b * kPackedRows));
    });
  };
  if (n >= kGemmMinRows && n <= kBf16DotMaxRows && Bf16DotForPackedGemm()) {
    const int ldx = kpad + kBf16DotRowPad;
    const AlignedVector<uint16_t> xb = ToBf16Rows(x, n, k, ldx);
    for_blocks_in_turns([&](int b, int o0, int cols) {
      PackedBf16Dot(xb.data(), ldx, n, kpad, w.block(b), y + o0, m, cols);
    });
    return;
  }
  if (n >= kGemmMinRows) {
    const AlignedVector<uint16_t> xb = ToBf16Rows(x, n, k, k);
    ForWeightSlices(m, k, sizeof(uint16_t), [&](int o0, int o1) {
      Shape s{n, o1 - o0, k, k, 0, m, true, Dt::bf16, Dt::bf16};
      s.w_packed = true;
      RunDenseOut(s, xb.data(), w.block(o0 / kPackedRows), y + o0, m);
    });
    return;
  }
  std::vector<float> xp(static_cast<size_t>(n) * kpad, 0.0f);  // rows zero-padded to kpad
  for (int t = 0; t < n; ++t)
    std::copy(x + static_cast<size_t>(t) * k, x + static_cast<size_t>(t + 1) * k,
              &xp[static_cast<size_t>(t) * kpad]);
  const PackedBf16Fn kernel = ActiveKernels().packed_bf16;
  for_blocks_in_turns(
      [&](int b, int o0, int cols) { kernel(xp.data(), n, kpad, w.block(b), y + o0, m, cols); });
}

void GemmNTSerial(const float* x, int ldx, int n, const float* w, int ldw, int m, int k, float* y, int ldy) {
  Run({n, m, k, ldx, ldw, ldy, true, Dt::f32, Dt::f32}, x, w, y);
}

void GemmNNSerial(const float* x, int ldx, int n, const float* w, int ldw, int m, int k, float* y, int ldy) {
  Run({n, m, k, ldx, ldw, ldy, false, Dt::f32, Dt::f32}, x, w, y);
}

void Matmul(const float* x, int n, const void* w, DType wt, int m, int k, float* y, const float* row_scales,
            bool batch_invariant) {
  if (!batch_invariant && n >= kGemmMinRows && GemmSupports(wt)) return GemmNT(x, n, w, wt, m, k, y, m);
  MatmulNT(x, n, w, wt, m, k, y, row_scales);
}

void AttentionPrefill(const float* q, int ldq, int rows, int pos0, const float* k, const float* v, int d,
                      float scale, float* out, int ldo, float* scratch) {
  for (int r0 = 0; r0 < rows; r0 += kAttentionTileRows) {
    const int nt = std::min(kAttentionTileRows, rows - r0), keys = pos0 + r0 + nt;
    float* s = scratch;  // (nt, keys): scores, then probabilities
    GemmNTSerial(q + static_cast<size_t>(r0) * ldq, ldq, nt, k, d, keys, d, s, keys);
    for (int i = 0; i < nt; ++i) {
      float* row = s + static_cast<size_t>(i) * keys;
      const int valid = pos0 + r0 + i + 1;  // causal: keys 0 .. its own position
      ScaledSoftmax(row, valid, scale);
      std::fill(row + valid, row + keys, 0.0f);
    }
    GemmNNSerial(s, keys, nt, v, d, d, keys, out + static_cast<size_t>(r0) * ldo, ldo);
  }
}

}  // namespace tpserve::kernels
