// Helpers shared by the test binaries: fixture lookup (../shared or $TPSERVE_SHARED), a temp
// directory, and the MPI environment of mpi_main.cpp.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

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

void SetMpiEnv(MpiEnv* env);
MpiEnv* GetMpiEnv();

}  // namespace tpserve::testing
