// Minimal leveled logging to stderr, prefixed with the MPI rank. stdout is reserved for
// program output (e.g. `tpserve run --json`).
#pragma once

#include <string>

#include <fmt/format.h>

namespace tpserve::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void SetRank(int rank);      // called once after MPI init
void SetLevel(Level level);  // default kInfo; TPSERVE_LOG_LEVEL=debug|info|warn|error overrides
void Write(Level level, const std::string& message);
bool Enabled(Level level);

template <typename... Args>
void Info(fmt::format_string<Args...> f, Args&&... args) {
  if (Enabled(Level::kInfo)) Write(Level::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Warn(fmt::format_string<Args...> f, Args&&... args) {
  if (Enabled(Level::kWarn)) Write(Level::kWarn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Error(fmt::format_string<Args...> f, Args&&... args) {
  if (Enabled(Level::kError)) Write(Level::kError, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Debug(fmt::format_string<Args...> f, Args&&... args) {
  if (Enabled(Level::kDebug)) Write(Level::kDebug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace tpserve::log
