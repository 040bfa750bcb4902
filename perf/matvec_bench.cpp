// Matmul weight read rate over a whole model's weights, without the rest of a decode step: the
// bench-1b projection shapes (TinyLlama: 22 layers, hidden 2048, FFN 5632, 4 KV heads; or
// --preset small: 8 layers, hidden 512, FFN 1536, 4 KV heads of 64) split for
// one rank of TP `--tp`, each layer's stacked q/k/v, o, stacked gate/up and down matrices in
// their own allocations, read in order as a decode step does (so every matrix comes from DRAM).
// Reports GB/s of weights per format, overall and per projection (best of --passes); compare with
// perf/membw at the same thread count, run right before or after (this VM drifts by ±10 % within
// minutes). --rows N multiplies N activation rows at once (batched decode) through the engine's
// matmul policy (the GEMM from kGemmMinRows rows on). --against-read also times, after each
// pass of matmuls, a plain read of the same weight bytes (four streams per thread prefetched
// 1 KB ahead, as perf/membw's fastest pattern on the Zen 5 VM; the threads take 256 KB pieces in
// turns), and reports per format the median over the passes of read time / matmul time: 1.0 is
// a kernel that reads its weights as fast as nothing but loads would, in the same phase of the VM.
//   matvec_bench --threads N [--tp T] [--rows 1] [--passes 6] [--preset bench-1b] [--against-read]
//                [--formats f32,bf16,int8,bf16-packed]
//   -> JSON on stdout
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "plain_read.h"

namespace {

using tpserve::kernels::DType;

struct Projection {
  const char* name;
  int rows, cols;
};

struct Preset {
  int layers, hidden, kv, ffn;  // kv: KV heads x head_dim
};
Preset PresetShapes(const std::string& name) {
  if (name == "small") return {8, 512, 256, 1536};
  return {22, 2048, 256, 5632};  // bench-1b
}

std::vector<Projection> LayerShapes(const Preset& p, int tp) {
  const int hidden = p.hidden, kv = p.kv, ffn = p.ffn;
  return {{"qkv", (hidden + 2 * kv) / tp, hidden},
          {"o", hidden, hidden / tp},
          {"gate_up", 2 * ffn / tp, hidden},
          {"down", hidden, ffn / tp}};
}

// Weights with ordinary magnitudes (no denormals, which would slow the float kernels).
void Fill(void* p, size_t elems, DType dt) {
  if (dt == DType::kI8) {
    auto* q = static_cast<int8_t*>(p);
    for (size_t i = 0; i < elems; ++i) q[i] = static_cast<int8_t>(static_cast<int>(i * 7 % 255) - 127);
    return;
  }
  std::vector<float> row(4096);
  for (size_t i = 0; i < row.size(); ++i) row[i] = 0.02f * std::sin(0.37f * static_cast<float>(i));
  for (size_t at = 0; at < elems; at += row.size()) {
    const size_t n = std::min(row.size(), elems - at);
    tpserve::kernels::ConvertDType(row.data(), DType::kF32,
                                   static_cast<char*>(p) + at * tpserve::kernels::DTypeSize(dt), dt, n);
  }
}

// Reads `bytes` at p with the pool's threads, 256 KB pieces taken in turns.
float ReadAll(const void* p, size_t bytes) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  constexpr size_t kPiece = 256 << 10;
  const int pieces = static_cast<int>((bytes + kPiece - 1) / kPiece);
  std::atomic<float> total{0.0f};
  tpserve::kernels::ParallelForDynamic(pieces, 1, [&](int b0, int b1) {
    const size_t begin = b0 * kPiece, end = std::min(bytes, b1 * kPiece);
    const float* f = reinterpret_cast<const float*>(static_cast<const char*>(p) + begin);
    const size_t n = (end - begin) / sizeof(float);
    total.fetch_add(avx512 ? tpserve::perf::SumFourStreams<1024>(f, n) : tpserve::perf::SumPlain(f, n),
                    std::memory_order_relaxed);
  });
  return total.load();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, tp = 1, passes = 6, rows = 1;
  std::string preset = "bench-1b";
  bool against_read = false;
  // bf16-packed: bf16 weights packed once for the GEMM kernels (the engine's default where the
  // CPU allows; skipped elsewhere).
  const std::vector<std::string> all_formats = {"f32", "bf16", "int8", "bf16-packed"};
  std::set<std::string> formats(all_formats.begin(), all_formats.end());
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--against-read") {
      against_read = true;
      --i;  // a flag without a value
      continue;
    }
    if (i + 1 >= argc) break;
    if (a == "--preset") preset = argv[i + 1];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    if (a == "--tp") tp = std::atoi(argv[i + 1]);
    if (a == "--passes") passes = std::atoi(argv[i + 1]);
    if (a == "--rows") rows = std::atoi(argv[i + 1]);
    if (a == "--formats") {  // a comma list; every name must be known
      formats.clear();
      std::stringstream list(argv[i + 1]);
      for (std::string name; std::getline(list, name, ',');) {
        if (std::find(all_formats.begin(), all_formats.end(), name) == all_formats.end()) {
          std::cerr << "matvec_bench: unknown format '" << name
                    << "' in --formats (choose from f32,bf16,int8,bf16-packed)\n";
          return 2;
        }
        formats.insert(name);
      }
    }
  }
  if (threads < 1 || rows < 1 || (tp != 1 && tp != 2 && tp != 4) ||
      (preset != "bench-1b" && preset != "small")) {
    std::cerr << "matvec_bench: --threads and --rows must be >= 1, --tp 1, 2 or 4 (4 KV heads) and --preset "
                 "bench-1b or small\n";
    return 2;
  }
  std::vector<int> cpus;  // pinned to CPUs 0..threads-1, as membw does
  for (int t = 0; t < threads; ++t) cpus.push_back(t);
  tpserve::kernels::SetThreads(threads, cpus);
  const Preset shape = PresetShapes(preset);
  const int layers = shape.layers;
  const std::vector<Projection> shapes = LayerShapes(shape, tp);
  // >= the widest cols and rows (gate_up at TP 1: 11264), per activation row
  std::vector<float> x(8192 * static_cast<size_t>(rows)), y(16384 * static_cast<size_t>(rows));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.1f * static_cast<float>(i));
  nlohmann::json out = {{"bench", "matmul weight read rate, " + preset + " shapes"},
                        {"rows", rows},
                        {"threads", threads},
                        {"tp", tp},
                        {"isa", tpserve::kernels::ActiveKernels().isa},
                        {"results", nlohmann::json::array()}};
  for (const std::string& format : all_formats) {
    if (formats.count(format) == 0) continue;
    const bool packed = format == "bf16-packed";
    const DType dt = format == "f32" ? DType::kF32 : format == "int8" ? DType::kI8 : DType::kBF16;
    struct Matrix {
      void* w;
      size_t bytes;
      std::unique_ptr<tpserve::kernels::PackedBf16> packed;
    };
    std::vector<Matrix> weights;
    std::vector<float> scales(16384, 0.01f);
    volatile float sink = 0;  // keeps the reads
    for (int l = 0; l < layers; ++l) {
      for (const Projection& s : shapes) {
        const size_t elems = static_cast<size_t>(s.rows) * s.cols;
        const size_t bytes = elems * tpserve::kernels::DTypeSize(dt);
        void* w = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
        Fill(w, elems, dt);
        weights.push_back({w, bytes, nullptr});
        if (packed) {
          weights.back().packed =
              tpserve::kernels::PackedBf16::Pack(static_cast<const uint16_t*>(w), s.rows, s.cols);
          std::free(w);
          weights.back().w = nullptr;
          if (!weights.back().packed) break;
        }
      }
    }
    if (packed && !weights.back().packed) {
      std::cerr << "matvec_bench: bf16 weights are not packed on this CPU; skipping bf16-packed\n";
      continue;
    }
    std::vector<double> best_per(shapes.size(), 1e30);
    double best = 1e30;
    size_t total = 0;
    for (const Matrix& m : weights) total += m.bytes;
    std::vector<double> read_over_matmul;  // --against-read: per pass
    for (int p = 0; p < passes; ++p) {
      std::vector<double> per(shapes.size(), 0.0);
      const auto t0 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < weights.size(); ++i) {
        const Projection& s = shapes[i % shapes.size()];
        const auto a = std::chrono::steady_clock::now();
        if (packed) {
          tpserve::kernels::MatmulPacked(x.data(), rows, *weights[i].packed, y.data());
        } else {
          tpserve::kernels::Matmul(x.data(), rows, weights[i].w, dt, s.rows, s.cols, y.data(), scales.data(),
                                   /*batch_invariant=*/false);
        }
        per[i % shapes.size()] += std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
      }
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, t);
      for (size_t j = 0; j < shapes.size(); ++j) best_per[j] = std::min(best_per[j], per[j]);
      if (against_read) {
        const auto r0 = std::chrono::steady_clock::now();
        for (const Matrix& m : weights) {
          sink = sink + (m.packed ? ReadAll(m.packed->block(0), m.packed->bytes()) : ReadAll(m.w, m.bytes));
        }
        read_over_matmul.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count() / t);
      }
    }
    nlohmann::json r = {
        {"dtype", format}, {"bytes", total}, {"gb_per_s", static_cast<double>(total) / best / 1e9}};
    if (against_read) {
      std::sort(read_over_matmul.begin(), read_over_matmul.end());
      r["read_time_over_matmul_time_median"] = read_over_matmul[read_over_matmul.size() / 2];
      r["read_time_over_matmul_time"] = read_over_matmul;
    }
    for (size_t j = 0; j < shapes.size(); ++j) {
      r["per_projection_gb_per_s"][shapes[j].name] =
          static_cast<double>(weights[j].bytes) * layers / best_per[j] / 1e9;
    }
    out["results"].push_back(r);
    for (Matrix& m : weights) std::free(m.w);
  }
  std::cout << out.dump(2) << std::endl;
  return 0;
}
