// RequestQueue: the hand-off between the gateway threads (which never call MPI) and the engine
// loop on rank 0's main thread. Gateway threads Submit requests and Cancel them; the engine
// loop takes them as a StepPlan and delivers token events back to each request's channel.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/batch_engine.h"
#include "engine/step_plan.h"

namespace tpserve {

// What a gateway thread reads for one request: tokens since its last read, and the end.
struct StreamUpdate {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
  bool aborted = false;      // ended by the server (shutdown) before finishing
  bool client_gone = false;  // the engine dropped it: the client cancelled or disconnected
  std::string abort_message;
  double time_to_first_token_s = 0, decode_time_s = 0;
  // For each of `tokens` after the request's first: the time since its previous token, as the
  // engine delivered them (the gateway may read several at once).
  std::vector<double> token_gaps_s;
  bool done() const { return finish != FinishReason::kNone || aborted; }
};

class RequestChannel {
 public:
  explicit RequestChannel(uint64_t id);
  uint64_t id() const { return id_; }
  // Engine side.
  void Push(const TokenEvent& ev);
  void Abort(const std::string& message);
  void MarkClientGone();  // the engine dropped the request: wakes Wait with client_gone
  // Gateway side: waits up to `timeout` for news; returns what arrived (possibly nothing).
  StreamUpdate Wait(std::chrono::milliseconds timeout);
  // Gateway side: `gone` says whether the client has cancelled or disconnected. The engine asks
  // at step boundaries, at most every RequestQueue::kClientCheckInterval (RequestQueue::TakePlan),
  // so a cancelled request stops within that and one step, and wakes the gateway thread
  // (StreamUpdate::client_gone), which therefore need not poll the client between tokens.
  // Reset to nullptr before the RPC's context goes away. `gone` runs under the queue's and this
  // channel's locks: it must be cheap and must not call back into either.
  void WatchClient(std::function<bool()> gone);
  bool ClientGone();

 private:
  const uint64_t id_;
  const std::chrono::steady_clock::time_point created_;
  std::chrono::steady_clock::time_point first_token_, last_token_;
  std::mutex mu_;
  std::condition_variable cv_;
  StreamUpdate pending_;
  bool has_first_ = false;
  std::function<bool()> gone_;
};

class RequestQueue {
 public:
  explicit RequestQueue(int max_queued) : max_queued_(max_queued) {}

  // Gateway side. Fails when draining (shutdown) or when too many requests are queued.
  Result<std::shared_ptr<RequestChannel>> Submit(RequestSpec spec);
  // finished: the gateway ended the request itself (a stop string matched), so the server's
  // statistics count it as finished rather than cancelled.
  void Cancel(uint64_t id, bool finished = false);

  // How often TakePlan asks the clients whether they are gone: asking all of them cost ~0.13 ms
  // per step at 16 streams (~1.5 % of a step), for news that matters at human time scales.
  static constexpr std::chrono::milliseconds kClientCheckInterval{5};

  // Engine side. Moves pending submissions and cancellations into a plan, after cancelling every
  // request whose client is gone (RequestChannel::WatchClient; at most every
  // kClientCheckInterval); *finished (optional) gets how many of the cancellations were requests
  // the gateway finished (stop strings), *dropped (optional) how many requests were cancelled
  // before they reached the engine (not in the plan: the engine never saw them).
  StepPlan TakePlan(int* finished = nullptr, int* dropped = nullptr);
  // Blocks until something is pending or `timeout` passes.
  void WaitForWork(std::chrono::milliseconds timeout);
  // Hands each event to its request's stream; events of a request cancelled meanwhile are dropped.
  // count(finished) runs first, under the queue's lock, with how many events finish a request that
  // is still live: a request whose last token races its cancel is counted once, as the cancel.
  void Deliver(const std::vector<TokenEvent>& events, const std::function<void(int finished)>& count);
  // Stops admission; later Submit calls fail with `reason`.
  void StopAdmission(const std::string& reason);
  // Ends every active request with `message`; returns their ids (for a cancel plan).
  std::vector<uint64_t> AbortAll(const std::string& message);
  size_t active() const;

 private:
  // Cancel's work once `id` has left active_; mu_ held.
  void DropLocked(uint64_t id, bool finished);

  const int max_queued_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_id_ = 1;
  bool admitting_ = true;
  std::string closed_reason_;
  std::vector<RequestSpec> pending_add_;
  std::vector<uint64_t> pending_cancel_;
  int pending_finished_ = 0;  // of pending_cancel_, those the gateway finished
  int dropped_ = 0;           // cancelled while still in pending_add_, since the last TakePlan
  std::map<uint64_t, std::shared_ptr<RequestChannel>> active_;
  std::chrono::steady_clock::time_point last_client_check_{};  // the epoch: the first TakePlan asks
};

}  // namespace tpserve
