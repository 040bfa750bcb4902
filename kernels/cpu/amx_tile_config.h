// The 64-byte operand of LDTILECFG (palette 1): per tile register, its bytes per row and rows.
// Shared by the AMX kernel (gemm_amx.cpp) and perf/peak_flops.
#pragma once

#include <cstdint>

namespace tpserve::kernels {

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(AmxTileConfig) == 64, "LDTILECFG reads exactly 64 bytes");

}  // namespace tpserve::kernels
