#include "cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

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
  auto key() const { return std::tie(n, m, k, ldx, ldw, ldy, w_transposed, src, wei); }
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

// The three operands' layouts of a shape (strides in elements).
memory::desc SrcDesc(const Shape& s) {
  return {{s.n, s.k}, s.src, {s.ldx, 1}};
}
memory::desc WeiDesc(const Shape& s) {
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

}  // namespace

bool GemmSupports(DType wt) {
  return wt == DType::kF32 || wt == DType::kBF16;
}

void GemmNT(const float* x, int n, const void* w, DType wt, int m, int k, float* y, int ldy) {
  const void* src = x;
  std::vector<uint16_t> x_bf16;
  if (wt == DType::kBF16) {  // the bf16 kernels take bf16 activations
    x_bf16.resize(static_cast<size_t>(n) * k);
    ParallelFor(n, 1, [&](int r0, int r1) {
      ConvertDType(x + static_cast<size_t>(r0) * k, DType::kF32, &x_bf16[static_cast<size_t>(r0) * k],
                   DType::kBF16, static_cast<size_t>(r1 - r0) * k);
    });
    src = x_bf16.data();
  }
  const Dt dt = wt == DType::kBF16 ? Dt::bf16 : Dt::f32;
  const size_t esize = DTypeSize(wt);
  // Weight rows go out in slices of 64 (a multiple of every kernel's register block) so the split
  // is even, and each library call takes at most ~1 MB of weights: that part stays in L2 while
  // all n activation rows stream past it, so the weights are read from memory once.
  constexpr int kSlice = 64;
  const int per_call =
      std::max(1, static_cast<int>((size_t{1} << 20) / (static_cast<size_t>(k) * esize * kSlice)));
  ParallelFor((m + kSlice - 1) / kSlice, 1, [&](int b0, int b1) {
    for (int b = b0; b < b1; b += per_call) {
      const int o0 = b * kSlice, o1 = std::min({m, b1 * kSlice, (b + per_call) * kSlice});
      const Shape s{n, o1 - o0, k, k, k, ldy, true, dt, dt};
      Run(s, src, static_cast<const char*>(w) + static_cast<size_t>(o0) * k * esize, y + o0);
    }
  });
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
