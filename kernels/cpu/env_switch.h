// The kernels' on/off environment switches (TPSERVE_AMX, TPSERVE_BF16_DOT, TPSERVE_HUGE_PAGES):
// on unless the variable is set to "0".
#pragma once

#include <cstdlib>
#include <cstring>

namespace tpserve::kernels {

inline bool EnvSwitchOn(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr || std::strcmp(value, "0") != 0;
}

}  // namespace tpserve::kernels
