#include "server/engine_loop.h"

#include <chrono>
#include <thread>

#include "common/log.h"

namespace tpserve {

namespace {

using Clock = std::chrono::steady_clock;

Status BroadcastPlan(Communicator& tp, StepPlan* plan) {
  // An empty plan (the common decode step) travels as a zero size: one 8-byte broadcast.
  std::vector<uint8_t> bytes;
  if (tp.rank() == 0 && !plan->empty()) bytes = SerializeStepPlan(*plan);
  TPS_RETURN_IF_ERROR(BroadcastVector(tp, bytes, 0).WithContext("broadcasting the step plan"));
  if (tp.rank() != 0 && !bytes.empty()) {
    TPS_ASSIGN_OR_RETURN(*plan, DeserializeStepPlan(bytes));
  }
  return Status();
}

// Rank 0 broadcasts an empty plan with nothing running only as the idle heartbeat, and every
// rank's engine holds the same state: each rank tells a heartbeat apart the same way.
bool IsHeartbeat(const StepPlan& plan, const BatchEngine& engine) {
  return plan.empty() && !engine.HasWork();
}

}  // namespace

Status RunEngineLoopLeader(BatchEngine& engine, Communicator& tp, RequestQueue& queue,
                           ServerCounters& counters, const std::atomic<bool>& stop_requested,
                           const LoopOptions& opts) {
  bool draining = false;
  auto drain_deadline = Clock::time_point::max();
  auto last_broadcast = Clock::now();
  // Throughput window (tokens/s and allreduce_share in GetServerInfo) and a status line every
  // 10 s while busy. window_allreduce_s: tp's all-reduce seconds at the window's start.
  Clock::time_point window_start, last_log = Clock::now();
  int64_t window_tokens = 0;
  double window_allreduce_s = 0;
  auto restart_window = [&](Clock::time_point at, double allreduce_s) {
    window_start = at;
    window_tokens = 0;
    window_allreduce_s = allreduce_s;
  };
  restart_window(Clock::now(), tp.allreduce_seconds());
  int64_t dropped_uncounted = 0;  // requests cancelled before they reached the engine
  const auto heartbeat = std::chrono::duration<double>(opts.heartbeat_s);
  for (;;) {
    if (stop_requested && !draining) {
      draining = true;
      drain_deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(opts.shutdown_timeout_s));
      queue.StopAdmission("the server is shutting down");
      log::Info("shutdown requested: finishing {} in-flight request(s) within {:.0f} s", queue.active(),
                opts.shutdown_timeout_s);
      std::lock_guard<std::mutex> lock(counters.mu);
      counters.draining = true;
    }
    int finished_by_gateway = 0;  // stop strings: cancelled in the engine, finished for the client
    int dropped = 0;
    StepPlan plan = queue.TakePlan(&finished_by_gateway, &dropped);
    dropped_uncounted += dropped;  // (an idle turn below counts nothing)
    if (draining && Clock::now() >= drain_deadline) {
      const auto ids =
          queue.AbortAll("the server is shutting down: request cancelled at the end of the grace period");
      plan.cancel.insert(plan.cancel.end(), ids.begin(), ids.end());
      plan.shutdown = true;
    }
    if (draining && !engine.HasWork() && plan.add.empty()) plan.shutdown = true;
    if (plan.empty() && !engine.HasWork()) {
      if (Clock::now() - last_broadcast < heartbeat) {
        queue.WaitForWork(std::chrono::milliseconds(50));  // idle: sleep, no broadcast
        continue;
      }
    }
    TPS_RETURN_IF_ERROR(BroadcastPlan(tp, &plan));
    last_broadcast = Clock::now();
    const bool was_idle = !engine.HasWork();
    engine.Apply(plan);
    // Work after idling: the throughput window starts now, not at the last idle heartbeat.
    if (was_idle && engine.HasWork()) restart_window(last_broadcast, tp.allreduce_seconds());
    if (plan.shutdown) break;
    if (IsHeartbeat(plan, engine)) {
      {
        std::lock_guard<std::mutex> lock(counters.mu);
        counters.stalled_after = last_broadcast + std::chrono::duration_cast<Clock::duration>(
                                                      std::chrono::duration<double>(opts.stall_s));
      }
      const Status st = tp.Barrier().WithContext("the idle heartbeat");
      std::lock_guard<std::mutex> lock(counters.mu);
      counters.stalled_after = Clock::time_point::max();
      TPS_RETURN_IF_ERROR(st);
    }
    std::vector<TokenEvent> events;
    if (engine.HasWork()) {
      TPS_ASSIGN_OR_RETURN(events, engine.Step());
    }
    window_tokens += static_cast<int64_t>(events.size());
    const auto now = Clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start).count();
    // The counters first, so that a client that sees its final token also sees it counted.
    queue.Deliver(events, [&](int finished) {
      std::lock_guard<std::mutex> lock(counters.mu);
      if (window_s >= 1.0 || !engine.HasWork()) {
        const double allreduce_s = tp.allreduce_seconds();
        counters.tokens_per_s = window_s > 0 ? window_tokens / window_s : 0.0;
        counters.allreduce_share = window_s > 0 ? (allreduce_s - window_allreduce_s) / window_s : 0.0;
        restart_window(now, allreduce_s);
      }
      counters.engine = engine.stats();
      counters.generated_tokens += static_cast<int64_t>(events.size());
      counters.finished += finished + finished_by_gateway;
      counters.cancelled +=
          static_cast<int64_t>(plan.cancel.size()) - finished_by_gateway + dropped_uncounted;
      dropped_uncounted = 0;
    });
    // Deliver woke the gRPC handler threads of these streams. This thread goes straight on to
    // the next step, and on a host whose cores the ranks fill it would hold the core until the
    // scheduler's next tick (~4 ms, longer than a step): let a woken handler write its token now.
    if (!events.empty()) std::this_thread::yield();
    if (engine.HasWork() && now - last_log >= std::chrono::seconds(10)) {
      last_log = now;
      const EngineStats st = engine.stats();
      log::Info(
          "running {}, waiting {}, KV blocks {}/{} used, {:.1f} tok/s, all-reduce {:.0f}% of rank 0's time",
          st.running, st.waiting, st.kv_total_blocks - st.kv_free_blocks, st.kv_total_blocks,
          counters.tokens_per_s, 100 * counters.allreduce_share);
    }
  }
  std::lock_guard<std::mutex> lock(counters.mu);
  counters.engine = engine.stats();
  return Status();
}

Status RunEngineLoopFollower(BatchEngine& engine, Communicator& tp) {
  for (;;) {
    StepPlan plan;
    TPS_RETURN_IF_ERROR(BroadcastPlan(tp, &plan));
    engine.Apply(plan);
    if (plan.shutdown) return Status();
    if (IsHeartbeat(plan, engine)) {
      TPS_RETURN_IF_ERROR(tp.Barrier().WithContext("the idle heartbeat"));
      continue;
    }
    if (engine.HasWork()) {
      TPS_ASSIGN_OR_RETURN(std::vector<TokenEvent> events, engine.Step());
      (void)events;  // rank 0 streams them
    }
  }
}

}  // namespace tpserve
