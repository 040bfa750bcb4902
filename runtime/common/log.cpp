#include "common/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace tpserve::log {
namespace {

int g_rank = -1;
Level LevelFromEnv() {
  const char* env = std::getenv("TPSERVE_LOG_LEVEL");
  if (env == nullptr) return Level::kInfo;
  if (std::strcmp(env, "debug") == 0) return Level::kDebug;
  if (std::strcmp(env, "warn") == 0) return Level::kWarn;
  if (std::strcmp(env, "error") == 0) return Level::kError;
  return Level::kInfo;
}
Level g_level = LevelFromEnv();
std::mutex g_mutex;

const char* Name(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "?";
}

}  // namespace

void SetRank(int rank) {
  g_rank = rank;
}
void SetLevel(Level level) {
  g_level = level;
}
bool Enabled(Level level) {
  return static_cast<int>(level) >= static_cast<int>(g_level);
}

void Write(Level level, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_rank >= 0) {
    std::fprintf(stderr, "[tpserve rank %d] %s: %s\n", g_rank, Name(level), message.c_str());
  } else {
    std::fprintf(stderr, "[tpserve] %s: %s\n", Name(level), message.c_str());
  }
  std::fflush(stderr);
}

}  // namespace tpserve::log
