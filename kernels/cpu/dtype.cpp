#include "cpu/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace tpserve::kernels {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kI8:
      return "int8";
  }
  return "?";
}

bool ParseDType(const std::string& name, DType* out) {
  if (name == "f32" || name == "float32" || name == "float") {
    *out = DType::kF32;
  } else if (name == "f16" || name == "float16" || name == "half") {
    *out = DType::kF16;
  } else if (name == "bf16" || name == "bfloat16") {
    *out = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24
      float v = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&bits, &v, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504: inf
  if (abs < 0x38800000u) {                        // below the smallest normal 2^-14: subnormal
    float v;
    std::memcpy(&v, &abs, 4);
    // subnormal step is 2^-24; nearbyint rounds half to even in the default mode
    return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(v, 24)));
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);  // round mantissa 23 -> 10 bits, ties to even
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

namespace {
// The conversions of the hot paths (activations to bf16 for the GEMMs, bf16 embedding rows),
// cloned for AVX-512 so they vectorize.
__attribute__((target_clones("avx512f", "default"))) void F32ToBf16N(const float* src, uint16_t* dst,
                                                                     size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = F32ToBf16(src[i]);
}
__attribute__((target_clones("avx512f", "default"))) void Bf16ToF32N(const uint16_t* src, float* dst,
                                                                     size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
}
}  // namespace

void ConvertDType(const void* src, DType src_type, void* dst, DType dst_type, size_t n) {
  if (src_type == DType::kI8 || dst_type == DType::kI8) {
    std::fprintf(stderr, "ConvertDType: int8 needs row scales; use QuantizeRowInt8\n");
    std::abort();
  }
  if (src_type == dst_type) {
    std::memcpy(dst, src, n * DTypeSize(src_type));
    return;
  }
  if (src_type == DType::kF32 && dst_type == DType::kBF16) {
    return F32ToBf16N(static_cast<const float*>(src), static_cast<uint16_t*>(dst), n);
  }
  if (src_type == DType::kBF16 && dst_type == DType::kF32) {
    return Bf16ToF32N(static_cast<const uint16_t*>(src), static_cast<float*>(dst), n);
  }
  for (size_t i = 0; i < n; ++i) {
    float v = 0.0f;
    switch (src_type) {
      case DType::kF32:
        v = static_cast<const float*>(src)[i];
        break;
      case DType::kF16:
        v = F16ToF32(static_cast<const uint16_t*>(src)[i]);
        break;
      case DType::kBF16:
        v = Bf16ToF32(static_cast<const uint16_t*>(src)[i]);
        break;
      case DType::kI8:
        break;
    }
    switch (dst_type) {
      case DType::kF32:
        static_cast<float*>(dst)[i] = v;
        break;
      case DType::kF16:
        static_cast<uint16_t*>(dst)[i] = F32ToF16(v);
        break;
      case DType::kBF16:
        static_cast<uint16_t*>(dst)[i] = F32ToBf16(v);
        break;
      case DType::kI8:
        break;
    }
  }
}

namespace {
// Symmetric per-row quantization to [-qmax, qmax]: scale = max|x| / qmax, round half away from
// zero (as lround, but without a libm call per element, so the loop vectorizes: int16 runs on
// the main thread before every int8 matmul). The maximum in 16 independent running chains
// rather than one (the maximum does not depend on the order).
template <typename Q>
__attribute__((always_inline)) inline float QuantizeRow(const float* x, int k, Q* q, float qmax) {
  float lanes[16] = {};
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    for (int l = 0; l < 16; ++l) lanes[l] = std::max(lanes[l], std::abs(x[i + l]));
  }
  float amax = 0;
  for (; i < k; ++i) amax = std::max(amax, std::abs(x[i]));
  for (float l : lanes) amax = std::max(amax, l);
  const float scale = amax / qmax;
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  for (i = 0; i < k; ++i) {  // |x * inv| <= qmax
    const float v = x[i] * inv;
    q[i] = static_cast<Q>(v + (v >= 0.0f ? 0.5f : -0.5f));
  }
  return scale;
}
}  // namespace

float QuantizeRowInt8(const float* w, int k, int8_t* q) {
  return QuantizeRow(w, k, q, 127.0f);
}
__attribute__((target_clones("avx512f", "default"))) float QuantizeRowInt16(const float* x, int k,
                                                                            int16_t* q) {
  return QuantizeRow(x, k, q, 32767.0f);
}

}  // namespace tpserve::kernels
