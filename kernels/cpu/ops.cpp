// Element-wise and attention kernels (portable; not on the bandwidth-critical path).
#include <cmath>

#include "cpu/kernels.h"

namespace tpserve::kernels {

void RmsNorm(const float* x, const float* weight, int n, float eps, float* y) {
  double ss = 0.0;  // double: the sum of squares over hidden sizes of thousands loses bits in f32
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) y[i] = x[i] * inv * weight[i];
}

void RopeRotateHalf(float* x, int head_dim, const float* cos_sin) {
  const int half = head_dim / 2;
  const float* c = cos_sin;
  const float* s = cos_sin + half;
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = b * c[i] + a * s[i];
  }
}

void SiluMul(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AttentionHead(const float* q, const float* const* k_blocks, const float* const* v_blocks, int npos,
                   int block_size, int d, float scale, float* scratch, float* out) {
  const DotFn dot = ActiveKernels().dot[static_cast<int>(DType::kF32)];
  float max_score = -INFINITY;
  for (int p = 0; p < npos; ++p) {
    const float s = dot(q, k_blocks[p / block_size] + static_cast<size_t>(p % block_size) * d, d) * scale;
    scratch[p] = s;
    if (s > max_score) max_score = s;
  }
  double denom = 0.0;
  for (int p = 0; p < npos; ++p) {
    scratch[p] = std::exp(scratch[p] - max_score);
    denom += scratch[p];
  }
  const float inv = static_cast<float>(1.0 / denom);
  for (int i = 0; i < d; ++i) out[i] = 0.0f;
  for (int p = 0; p < npos; ++p) {
    const float w = scratch[p] * inv;
    const float* vr = v_blocks[p / block_size] + static_cast<size_t>(p % block_size) * d;
    for (int i = 0; i < d; ++i) out[i] += w * vr[i];
  }
}

}  // namespace tpserve::kernels
