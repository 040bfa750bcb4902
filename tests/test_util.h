// Helpers shared by the test binaries: fixture lookup (../shared or $TPSERVE_SHARED), a temp
// directory, seeded random data, and the MPI environment of mpi_main.cpp.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace tpserve {
class MpiEnv;
}

namespace tpserve::testing {

// Path of the shared fixtures folder, or "" when absent (tests then GTEST_SKIP with a message).
inline std::string SharedDir() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("TPSERVE_SHARED"); env && fs::exists(env)) return env;
  for (const char* rel : {"../shared", "../../shared", "../../../shared"}) {
    for (fs::path base : {fs::current_path(), fs::path(TPSERVE_SOURCE_DIR)}) {
      if (fs::exists(base / rel / "DESIGN.md")) return fs::canonical(base / rel).string();
    }
  }
  return "";
}

// A fresh directory under $TMPDIR (or /tmp), removed by the caller when it likes.
inline std::string MakeTempDir(const std::string& tag) {
  std::string tmpl = (std::filesystem::temp_directory_path() / ("tpserve-" + tag + "-XXXXXX")).string();
  char* p = mkdtemp(tmpl.data());
  return p ? std::string(p) : std::string();
}

// n floats uniform in [-scale, scale), the same for a given seed.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

void SetMpiEnv(MpiEnv* env);
MpiEnv* GetMpiEnv();

}  // namespace tpserve::testing
