// The VNNI build of the int8 kernels (see int8_avx512.h); only called when the CPU probe
// reports avx512vnni.
#include "cpu/int8_avx512.h"

namespace tpserve::kernels {

int64_t DotI8Avx512Vnni(const int16_t* x, const int8_t* w, int k) {
  return int8_detail::DotI8Impl<true>(x, w, k);
}
void RowsI8Avx512Vnni(const int16_t* x, const int8_t* w, size_t row_stride, int k, int64_t* out) {
  int8_detail::RowsI8Impl<kRowsI8, true>(x, w, row_stride, k, out);
}
void RowsI8BatchAvx512Vnni(const int16_t* x, size_t x_stride, int rows, const float* x_scales,
                           const int8_t* w, size_t row_stride, const float* row_scales, int k, float* y,
                           size_t ldy) {
  int8_detail::RowsI8BatchAny<true>(x, x_stride, rows, x_scales, w, row_stride, row_scales, k, y, ldy);
}

}  // namespace tpserve::kernels
