// Status and Result<T>: errors as values with context (file:line and a message that names
// the file, tensor, key or rank involved). Nothing below apps/ calls exit().
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace tpserve {

class Status {
 public:
  Status() = default;  // OK
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !message_.has_value(); }
  const std::string& message() const {
    static const std::string kOk = "OK";
    return message_ ? *message_ : kOk;
  }
  // Prefixes context ("loading shard: ...") as the error travels up.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(context + ": " + *message_);
  }

 private:
  explicit Status(std::string message) : message_(std::move(message)) {}
  std::optional<std::string> message_;
};

// Holds either a value or an error Status.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace tpserve

// TPS_ERROR("tensor {} missing in {}", name, file) -> Status carrying file:line of the caller.
#define TPS_ERROR(...) \
  ::tpserve::Status::Error(fmt::format("{} [{}:{}]", fmt::format(__VA_ARGS__), __FILE__, __LINE__))

#define TPS_CONCAT_INNER(a, b) a##b
#define TPS_CONCAT(a, b) TPS_CONCAT_INNER(a, b)

#define TPS_RETURN_IF_ERROR(expr)       \
  do {                                  \
    ::tpserve::Status _tps_st = (expr); \
    if (!_tps_st.ok()) return _tps_st;  \
  } while (0)

// TPS_ASSIGN_OR_RETURN(auto x, MakeX()) binds the value or returns the error.
#define TPS_ASSIGN_OR_RETURN(lhs, expr) TPS_ASSIGN_OR_RETURN_IMPL(TPS_CONCAT(_tps_r_, __LINE__), lhs, expr)
#define TPS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
