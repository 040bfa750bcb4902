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

// Every one of the 8 tiles 16 rows x 64 bytes (16 f32 or int32, 32 bf16 or 64 int8 a row).
inline AmxTileConfig AllTiles16x64() {
  AmxTileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  return cfg;
}

// Call right before _tile_loadconfig(&cfg). GCC 12's builtin does not tell the optimizer that
// LDTILECFG reads all 64 bytes: in an out-of-line Configure it kept only the palette store and
// dropped those of rows and colsb as dead, and the next tile instruction raised SIGILL.
inline void KeepTileConfigStores(const AmxTileConfig& cfg) {
  asm volatile("" : : "m"(cfg) : "memory");
}

}  // namespace tpserve::kernels
