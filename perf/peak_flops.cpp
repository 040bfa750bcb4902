// Peak matrix throughput of this CPU at a given thread count, measured by register-resident
// microkernels (the ceiling prefill is compared with): AVX-512 FMA f32 (12 independent chains of
// vfmadd231ps), AVX512-BF16 dot products (12 chains of vdpbf16ps, the ceiling of PackedBf16Dot)
// where the CPU has them, and, where the CPU and kernel allow it, AMX bf16 (TDPBF16PS on resident
// tiles) and AMX's GEMM step with its tile loads from L1 (AmxL1StepLoop).
//   peak_flops --threads N   -> one JSON line {"threads", "avx512_fma_f32_gflops",
//                                              "avx512_bf16_dot_gflops", "amx_bf16_gflops",
//                                              "amx_bf16_l1_step_gflops"}
#include <immintrin.h>
#include <sched.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "cpu/amx_tile_config.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace {

constexpr int64_t kIters = 20'000'000;

__attribute__((target("avx512f,fma"))) float FmaLoop(int64_t iters) {
  __m512 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm512_set1_ps(0.001f * j);
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < 12; ++j) a[j] = _mm512_fmadd_ps(a[j], x, y);
  }
  __m512 s = a[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}

// Each vdpbf16ps: 16 lanes x 2 products x 2 flops.
__attribute__((target("avx512f,avx512bf16"))) float Bf16DotLoop(int64_t iters) {
  __m512 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm512_set1_ps(0.001f * j);
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999f), _mm512_set1_ps(0.999f));
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(1e-7f));
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < 12; ++j) a[j] = _mm512_dpbf16_ps(a[j], x, y);
  }
  __m512 s = a[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}

// Every tile 16 rows x 64 bytes (16 f32 or 32 bf16 a row).
__attribute__((target("amx-tile"))) void ConfigureTiles() {
  const tpserve::kernels::AmxTileConfig cfg = tpserve::kernels::AllTiles16x64();
  tpserve::kernels::KeepTileConfigStores(cfg);
  _tile_loadconfig(&cfg);
}

// C tiles 0..3 (16x16 f32) += A tiles 4,5 (16x32 bf16) x B tiles 6,7: 4 independent TDPBF16PS,
// each 16*16*32*2 = 16384 flops.
__attribute__((target("amx-tile,amx-bf16"))) void AmxLoop(int64_t iters) {
  ConfigureTiles();
  alignas(64) uint16_t buf[16 * 32];  // each thread its own
  for (auto& v : buf) v = 0x3c00;
  alignas(64) float cbuf[16 * 16] = {};
  for (int t = 0; t < 4; ++t) {
    switch (t) {
      case 0:
        _tile_loadd(0, cbuf, 64);
        break;
      case 1:
        _tile_loadd(1, cbuf, 64);
        break;
      case 2:
        _tile_loadd(2, cbuf, 64);
        break;
      default:
        _tile_loadd(3, cbuf, 64);
        break;
    }
  }
  _tile_loadd(4, buf, 64);
  _tile_loadd(5, buf, 64);
  _tile_loadd(6, buf, 64);
  _tile_loadd(7, buf, 64);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, cbuf, 64);
  _tile_release();
}

// The step every AMX GEMM repeats, with its operands in L1: 8 tile registers hold at most 2 x 2
// sums, 2 activation tiles and 2 weight tiles, so each 32-deep step loads 4 tiles for its 4
// TDPBF16PS (the activations as dense 1 KB tiles, the weights from the packed layout's 256-byte
// rows), the fewest loads per product any blocking gets. The ceiling a GEMM meets before any
// cache or memory effect.
__attribute__((target("amx-tile,amx-bf16"))) void AmxL1StepLoop(int64_t iters) {
  ConfigureTiles();
  alignas(64) uint16_t a[2][16 * 32];  // each thread its own (bf16 1.0)
  alignas(64) uint16_t w[16 * 128];    // 16 pair rows of 64 outputs
  for (auto& v : a[0]) v = 0x3f80;
  for (auto& v : a[1]) v = 0x3f80;
  for (auto& v : w) v = 0x3f80;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_loadd(4, a[0], 64);
    _tile_loadd(5, a[1], 64);
    _tile_loadd(6, w, 256);
    _tile_loadd(7, w + 32, 256);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float cbuf[16 * 16];
  _tile_stored(0, cbuf, 64);
  _tile_release();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--threads") threads = std::atoi(argv[i + 1]);
  }
  // The first `threads` CPUs this process may run on (taskset's), not CPUs 0..n-1: two probes
  // started with `taskset -c 0` and `taskset -c 1` then really run on different CPUs.
  std::vector<int> cpus;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  sched_getaffinity(0, sizeof(allowed), &allowed);
  for (int c = 0; c < CPU_SETSIZE && static_cast<int>(cpus.size()) < threads; ++c) {
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  }
  tpserve::kernels::SetThreads(threads, cpus);
  nlohmann::json out = {{"threads", threads}};
  if (__builtin_cpu_supports("avx512f")) {
    volatile float sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
    tpserve::kernels::ParallelFor(threads, 1, [&](int, int) { sink = sink + FmaLoop(kIters / 4); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out["avx512_fma_f32_gflops"] = threads * (kIters / 4) * 12.0 * 16 * 2 / s / 1e9;
  }
  if (tpserve::kernels::Bf16DotUsable()) {
    volatile float sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
    tpserve::kernels::ParallelFor(threads, 1, [&](int, int) { sink = sink + Bf16DotLoop(kIters / 4); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out["avx512_bf16_dot_gflops"] = threads * (kIters / 4) * 12.0 * 16 * 4 / s / 1e9;
  } else {
    out["avx512_bf16_dot_gflops"] = nullptr;
  }
  if (tpserve::kernels::AmxBf16Usable()) {  // asks Linux for the tile state (once per process)
    const int64_t iters = kIters / 20;
    const auto t0 = std::chrono::steady_clock::now();
    tpserve::kernels::ParallelFor(threads, 1, [&](int, int) { AmxLoop(iters); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out["amx_bf16_gflops"] = threads * iters * 4.0 * 16384 / s / 1e9;
    const auto t1 = std::chrono::steady_clock::now();
    tpserve::kernels::ParallelFor(threads, 1, [&](int, int) { AmxL1StepLoop(iters); });
    const double s1 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    out["amx_bf16_l1_step_gflops"] = threads * iters * 4.0 * 16384 / s1 / 1e9;
  } else {
    out["amx_bf16_gflops"] = nullptr;
    out["amx_bf16_l1_step_gflops"] = nullptr;
    out["amx_note"] = "AMX not available (CPU flags or the kernel's arch_prctl permission)";
  }
  std::cout << out.dump() << std::endl;
  return 0;
}
