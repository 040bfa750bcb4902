// WaitPacer: how a rank waits for its peers inside a collective. It spins for the first 50 us
// (a decode step's collectives are that short), then yields until 2 ms, then sleeps with a
// backoff capped at 1 ms, so an idle rank costs ~0 CPU while the wake-up delay stays small.
// Pause() returns false once the deadline (the collective timeout) has passed.
#pragma once

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace tpserve {

class WaitPacer {
 public:
  // timeout_s may be huge or infinite (TPSERVE_COLLECTIVE_TIMEOUT=inf): compared as a double, never
  // converted to clock ticks, where it would overflow.
  explicit WaitPacer(double timeout_s) : start_(Clock::now()), timeout_s_(timeout_s) {}

  bool Pause() {
    const auto waited = Clock::now() - start_;
    if (std::chrono::duration<double>(waited).count() > timeout_s_) return false;
    if (waited < kSpin) return true;
    if (waited < kYield) {
      sched_yield();
      return true;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, std::chrono::microseconds(1000));
    return true;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kSpin = std::chrono::microseconds(50);
  static constexpr auto kYield = std::chrono::microseconds(2000);
  Clock::time_point start_;
  double timeout_s_;
  std::chrono::microseconds sleep_{20};
};

}  // namespace tpserve
