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

// Call right before _tile_loadconfig(&cfg). GCC 12's builtin does not tell the optimizer that
// LDTILECFG reads all 64 bytes: in an out-of-line Configure it kept only the palette store and
// dropped those of rows and colsb as dead, and the next tile instruction raised SIGILL.
inline void KeepTileConfigStores(const AmxTileConfig& cfg) {
  asm volatile("" : : "m"(cfg) : "memory");
}

}  // namespace tpserve::kernels
