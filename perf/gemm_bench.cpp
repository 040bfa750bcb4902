// Matrix-matrix candidates for prefill and batched decode, per shape, at one thread count, in
// one run: tpserve's own weight-stationary dot kernels (MatmulNT), oneDNN through tpserve's
// GemmNT (the kernel pool splits the weight rows, oneDNN runs single-threaded on each slice),
// oneDNN threaded by its own OpenMP runtime on the whole matrix (plain and pre-packed weights),
// and OpenBLAS sgemm (f32). Shapes: y(M, N) = x(M, K) * w(N, K)^T for the bench-1b projections.
//   gemm_bench --threads N [--m 8,16,64,512] [--reps 5]   -> one JSON document on stdout
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace {

namespace k = tpserve::kernels;
using k::DType;

// Best of `reps` timed calls after one warm-up (which also compiles oneDNN's kernel).
template <class F>
double BestSeconds(int reps, F&& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// oneDNN on its own OpenMP threads, weights plain (N, K) rows or reordered to the layout it prefers.
struct OnednnWhole {
  OnednnWhole(int m, int n, int kk, dnnl::memory::data_type dt, bool packed, const void* w)
      : eng(dnnl::engine::kind::cpu, 0), strm(eng) {
    using md = dnnl::memory::desc;
    using tag = dnnl::memory::format_tag;
    const md src({m, kk}, dt, tag::ab), plain({kk, n}, dt, tag::ba),
        dst({m, n}, dnnl::memory::data_type::f32, tag::ab);
    const dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(src, packed ? md({kk, n}, dt, tag::any) : plain, dst), eng);
    prim = dnnl::matmul(pd);
    impl = pd.impl_info_str();
    dnnl::memory user(plain, eng, const_cast<void*>(w));
    wm = dnnl::memory(pd.weights_desc(), eng);
    dnnl::reorder(user, wm).execute(strm, user, wm);
    strm.wait();
    src_md = src;
    dst_md = dst;
  }
  void Run(const void* x, float* y) {
    dnnl::memory xm(src_md, eng, const_cast<void*>(x)), ym(dst_md, eng, y);
    prim.execute(strm, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
    strm.wait();
  }
  dnnl::engine eng;
  dnnl::stream strm;
  dnnl::matmul prim;
  dnnl::memory wm;
  dnnl::memory::desc src_md, dst_md;
  std::string impl;
};

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 5;
  std::vector<int> ms = {8, 16, 64, 512};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    if (a == "--reps") reps = std::atoi(argv[i + 1]);
    if (a == "--m") {
      ms.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string t; std::getline(ss, t, ',');) ms.push_back(std::atoi(t.c_str()));
    }
  }
  std::vector<int> cpus;
  for (int t = 0; t < threads; ++t) cpus.push_back(t);
  k::SetThreads(threads, cpus);
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  const struct {
    const char* name;
    int n, k;
  } weights[] = {{"q/o (2048x2048)", 2048, 2048},
                 {"gate/up (5632x2048)", 5632, 2048},
                 {"down (2048x5632)", 2048, 5632},
                 {"k/v (256x2048)", 256, 2048}};
  nlohmann::json rows = nlohmann::json::array();
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (const auto& wshape : weights) {
    const int n = wshape.n, kk = wshape.k;
    std::vector<float> w(static_cast<size_t>(n) * kk);
    for (float& v : w) v = 0.02f * normal(rng);
    std::vector<uint16_t> wb(w.size());
    k::ConvertDType(w.data(), DType::kF32, wb.data(), DType::kBF16, w.size());
    for (int m : ms) {
      std::vector<float> x(static_cast<size_t>(m) * kk), y(static_cast<size_t>(m) * n);
      for (float& v : x) v = normal(rng);
      std::vector<uint16_t> xb(x.size());
      k::ConvertDType(x.data(), DType::kF32, xb.data(), DType::kBF16, x.size());
      const double flops = 2.0 * m * n * kk;
      auto gflops = [&](auto&& f) { return flops / BestSeconds(reps, f) / 1e9; };
      nlohmann::json r = {{"weights", wshape.name}, {"m", m}, {"n", n}, {"k", kk}};
      for (DType wt : {DType::kBF16, DType::kF32}) {
        const void* wp = wt == DType::kBF16 ? static_cast<const void*>(wb.data()) : w.data();
        const auto dt = wt == DType::kBF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
        const void* xp = wt == DType::kBF16 ? static_cast<const void*>(xb.data()) : x.data();
        const std::string p = k::DTypeName(wt);
        r[p + "_own_dot"] = gflops([&] { k::MatmulNT(x.data(), m, wp, wt, n, kk, y.data()); });
        r[p + "_onednn_pool"] = gflops([&] { k::GemmNT(x.data(), m, wp, wt, n, kk, y.data(), n); });
        OnednnWhole plain(m, n, kk, dt, false, wp), packed(m, n, kk, dt, true, wp);
        r[p + "_onednn_omp_plain"] = gflops([&] { plain.Run(xp, y.data()); });
        r[p + "_onednn_omp_packed"] = gflops([&] { packed.Run(xp, y.data()); });
        r[p + "_onednn_impl"] = plain.impl;
      }
      r["f32_openblas"] = gflops([&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kk, 1.0f, x.data(), kk, w.data(), kk, 0.0f,
                    y.data(), n);
      });
      std::cerr << r.dump() << "\n";
      rows.push_back(r);
    }
  }
  std::cout << nlohmann::json({{"bench", "gemm candidates (GFLOP/s, best of reps)"},
                               {"threads", threads},
                               {"results", rows}})
                   .dump(2)
            << "\n";
}
