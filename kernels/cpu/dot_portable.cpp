// Portable dot products: the reference path and the fallback on CPUs without AVX2.
#include "cpu/kernels.h"

namespace tpserve::kernels {
namespace {

template <typename Load>
inline float DotGeneric(const float* x, int k, Load load) {
  // 8 independent partial sums break the add dependency chain and fix the summation order.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j] * load(i + j);
  }
  for (; i < k; ++i) acc[i & 7] += x[i] * load(i);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float DotF32(const float* x, const void* w, int k) {
  const float* wf = static_cast<const float*>(w);
  return DotGeneric(x, k, [wf](int i) { return wf[i]; });
}
float DotF16(const float* x, const void* w, int k) {
  const uint16_t* wh = static_cast<const uint16_t*>(w);
  return DotGeneric(x, k, [wh](int i) { return F16ToF32(wh[i]); });
}
float DotBf16(const float* x, const void* w, int k) {
  const uint16_t* wh = static_cast<const uint16_t*>(w);
  return DotGeneric(x, k, [wh](int i) { return Bf16ToF32(wh[i]); });
}

int64_t DotI8(const int16_t* x, const int8_t* w, int k) {
  int64_t sum = 0;
  for (int i = 0; i < k; ++i) sum += static_cast<int32_t>(x[i]) * w[i];
  return sum;
}

// Four single dots: the same arithmetic as dot, so results match it bitwise.
template <DotFn Dot>
void Dot4(const float* const* x, const void* w, int k, float* out, const void* /*next*/) {
  for (int j = 0; j < 4; ++j) out[j] = Dot(x[j], w, k);
}

}  // namespace

void PackedBf16Portable(const float* x, int n, int kpad, const uint16_t* block, float* y, int ldy, int cols) {
  for (int r = 0; r < n; ++r) {
    const float* xr = x + static_cast<size_t>(r) * kpad;
    for (int j = 0; j < cols; ++j) {
      float acc = 0.0f;
      for (int c = 0; c < kpad; ++c) {
        acc += xr[c] * Bf16ToF32(block[PackedIndex(j, c)]);
      }
      y[static_cast<size_t>(r) * ldy + j] = acc;
    }
  }
}

const CpuKernelTable& PortableKernels() {
  static const CpuKernelTable table = [] {
    CpuKernelTable t;
    t.isa = "portable";
    t.dot[static_cast<int>(DType::kF32)] = DotF32;
    t.dot[static_cast<int>(DType::kF16)] = DotF16;
    t.dot[static_cast<int>(DType::kBF16)] = DotBf16;
    t.dot4[static_cast<int>(DType::kF32)] = Dot4<DotF32>;
    t.dot4[static_cast<int>(DType::kF16)] = Dot4<DotF16>;
    t.dot4[static_cast<int>(DType::kBF16)] = Dot4<DotBf16>;
    t.dot_i8 = DotI8;
    return t;
  }();
  return table;
}

}  // namespace tpserve::kernels
