// Picks the CPU kernel table once at start-up from a feature probe.
#include <cstdlib>

#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

bool CpuHas(const char* isa) {
  __builtin_cpu_init();
  if (std::string(isa) == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  }
  if (std::string(isa) == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }
  return std::string(isa) == "portable";
}

const CpuKernelTable& Choose() {
  if (const char* forced = std::getenv("TPSERVE_ISA")) {
    if (const CpuKernelTable* t = KernelsForIsa(forced)) return *t;
  }
  return *KernelsForIsa(SupportedIsas().front());
}

}  // namespace

std::vector<std::string> SupportedIsas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "portable"}) {
    if (CpuHas(isa)) out.emplace_back(isa);
  }
  return out;
}

const CpuKernelTable* KernelsForIsa(const std::string& isa) {
  if (!CpuHas(isa.c_str())) return nullptr;
  if (isa == "avx512") return Avx512Kernels();
  if (isa == "avx2") return Avx2Kernels();
  return &PortableKernels();
}

const CpuKernelTable& ActiveKernels() {
  static const CpuKernelTable& table = Choose();
  return table;
}

void MatmulNT(const CpuKernelTable& kt, const float* x, int n, const void* w, DType wt, int m, int k,
              float* y) {
  const DotFn dot = kt.dot[static_cast<int>(wt)];
  const Dot4Fn dot4 = kt.dot4[static_cast<int>(wt)];
  const size_t row_bytes = static_cast<size_t>(k) * DTypeSize(wt);
  const char* wb = static_cast<const char*>(w);
  for (int o = 0; o < m; ++o) {
    const void* row = wb + static_cast<size_t>(o) * row_bytes;
    int t = 0;
    for (; t + 4 <= n; t += 4) {
      const float* xs[4] = {x + static_cast<size_t>(t) * k, x + static_cast<size_t>(t + 1) * k,
                            x + static_cast<size_t>(t + 2) * k, x + static_cast<size_t>(t + 3) * k};
      float out[4];
      dot4(xs, row, k, out);
      for (int j = 0; j < 4; ++j) y[static_cast<size_t>(t + j) * m + o] = out[j];
    }
    for (; t < n; ++t) y[static_cast<size_t>(t) * m + o] = dot(x + static_cast<size_t>(t) * k, row, k);
  }
}

}  // namespace tpserve::kernels
