#include "test_util.h"

namespace tpserve::testing {
namespace {
MpiEnv* g_env = nullptr;
}
void SetMpiEnv(MpiEnv* env) {
  g_env = env;
}
MpiEnv* GetMpiEnv() {
  return g_env;
}
}  // namespace tpserve::testing
