// The engine loop every rank runs while serving. Rank 0 turns the RequestQueue into StepPlans,
// broadcasts each plan on the TP group (size, then bytes), and delivers the token events; the
// other ranks receive each plan and run the same step. While idle, rank 0 sleeps on the queue
// and sends an empty plan once per heartbeat, so followers wait without spinning and still
// detect a dead rank 0 through the collective timeout; every rank then meets in a barrier, so
// rank 0 also hears from the others: a rank that hangs (stopped, not dead) turns the health
// service NOT_SERVING after LoopOptions::stall_s, before the collective timeout ends the job.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "comm/communicator.h"
#include "common/status.h"
#include "engine/batch_engine.h"
#include "server/request_queue.h"

namespace tpserve {

struct LoopOptions {
  double shutdown_timeout_s = 30.0;  // grace period for in-flight requests after SIGTERM/SIGINT
  double heartbeat_s = 1.0;          // empty plan interval while idle
  double stall_s = 5.0;              // a heartbeat barrier this long means a rank is hung
};

// Counters rank 0 publishes for GetServerInfo (read from gateway threads).
struct ServerCounters {
  mutable std::mutex mu;
  EngineStats engine;
  int64_t finished = 0, cancelled = 0, generated_tokens = 0;
  double tokens_per_s = 0;     // over the last window of about a second
  double allreduce_share = 0;  // rank 0's time in TP all-reduces over the same window
  bool draining = false;
  // Set while rank 0 waits in a heartbeat barrier: past this time the other ranks are late by
  // more than LoopOptions::stall_s and the health service reports NOT_SERVING.
  std::chrono::steady_clock::time_point stalled_after = std::chrono::steady_clock::time_point::max();
  // The health service's answer (mu held): not draining, and no rank late for the heartbeat
  // (hung: requests would wait for the collective timeout).
  bool ServingLocked() const { return !draining && std::chrono::steady_clock::now() <= stalled_after; }
  bool Serving() const {
    std::lock_guard<std::mutex> lock(mu);
    return ServingLocked();
  }
};

// Rank 0. Returns when a shutdown was requested (stop_requested) and the engine drained or the
// grace period ended; the SHUTDOWN plan has been broadcast by then.
Status RunEngineLoopLeader(BatchEngine& engine, Communicator& tp, RequestQueue& queue,
                           ServerCounters& counters, const std::atomic<bool>& stop_requested,
                           const LoopOptions& opts);

// Ranks other than 0. Returns after the SHUTDOWN plan.
Status RunEngineLoopFollower(BatchEngine& engine, Communicator& tp);

}  // namespace tpserve
