// Storage dtypes of weights and their conversions to and from f32 (scalar, portable).
// Activations are always f32; weights stay in their storage dtype and are widened in registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace tpserve::kernels {

// kI8: weight-only int8 quantization, symmetric, one f32 scale per row (w = q * scale); the
// scales travel beside the weights (HostTensor::row_scales), never through ConvertDType.
enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3 };
inline constexpr int kNumDTypes = 4;

inline size_t DTypeSize(DType t) {
  return t == DType::kF32 ? 4 : t == DType::kI8 ? 1 : 2;
}
const char* DTypeName(DType t);                        // "f32", "f16", "bf16", "int8"
bool ParseDType(const std::string& name, DType* out);  // accepts f32/float32, f16/float16/half, bf16/bfloat16

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);  // round to nearest even, overflow to inf

// Converts n elements between the float storage dtypes (f32, f16, bf16; any pair).
void ConvertDType(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

// Quantizes one row of k f32 values to int8 with a symmetric per-row scale: scale = max|w| / 127,
// q = round(w / scale) (0 and scale 0 for an all-zero row). Returns the scale.
float QuantizeRowInt8(const float* w, int k, int8_t* q);
// The same for one activation row to int16: scale = max|x| / 32767.
float QuantizeRowInt16(const float* x, int k, int16_t* q);
// An int8 product's output: the exact integer dot of a quantized activation row and an int8
// weight row, times both scales in double, rounded to float. Every int8 path computes it in this
// order (the vector kernels with the same operations), so they give the same bits.
inline float ScaleInt8Dot(double dot, float x_scale, float row_scale) {
  return static_cast<float>(dot * x_scale * row_scale);
}

}  // namespace tpserve::kernels
