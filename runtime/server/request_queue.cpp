#include "server/request_queue.h"

#include <algorithm>

namespace tpserve {

using Clock = std::chrono::steady_clock;

RequestChannel::RequestChannel(uint64_t id) : id_(id), created_(Clock::now()) {}

void RequestChannel::Push(const TokenEvent& ev) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    if (!has_first_) {
      has_first_ = true;
      first_token_ = now;
      pending_.time_to_first_token_s = std::chrono::duration<double>(now - created_).count();
    } else {
      pending_.token_gaps_s.push_back(std::chrono::duration<double>(now - last_token_).count());
    }
    last_token_ = now;
    pending_.tokens.push_back(ev.token);
    pending_.logprobs.push_back(ev.logprob);
    if (ev.finish != FinishReason::kNone) {
      pending_.finish = ev.finish;
      pending_.decode_time_s = std::chrono::duration<double>(now - first_token_).count();
    }
  }
  cv_.notify_all();  // unlocked: the woken gateway thread does not block on mu_ at once
}

void RequestChannel::Abort(const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.aborted = true;
  pending_.abort_message = message;
  cv_.notify_all();
}

void RequestChannel::MarkClientGone() {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.client_gone = true;
  cv_.notify_all();
}

StreamUpdate RequestChannel::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout,
               [this] { return !pending_.tokens.empty() || pending_.done() || pending_.client_gone; });
  StreamUpdate out = std::move(pending_);
  pending_ = StreamUpdate();
  pending_.time_to_first_token_s = out.time_to_first_token_s;
  return out;
}

void RequestChannel::WatchClient(std::function<bool()> gone) {
  std::lock_guard<std::mutex> lock(mu_);
  gone_ = std::move(gone);
}

bool RequestChannel::ClientGone() {
  std::lock_guard<std::mutex> lock(mu_);
  return gone_ && gone_();
}

Result<std::shared_ptr<RequestChannel>> RequestQueue::Submit(RequestSpec spec) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!admitting_) return Status::Error(closed_reason_);
  if (static_cast<int>(active_.size()) >= max_queued_) {
    return Status::Error(fmt::format(
        "the server already holds {} requests (--max-queued-requests); retry later", max_queued_));
  }
  spec.id = next_id_++;
  auto ch = std::make_shared<RequestChannel>(spec.id);
  active_[spec.id] = ch;
  pending_add_.push_back(std::move(spec));
  cv_.notify_all();
  return ch;
}

void RequestQueue::Cancel(uint64_t id, bool finished) {
  std::lock_guard<std::mutex> lock(mu_);
  if (active_.erase(id) == 0) return;  // already finished
  DropLocked(id, finished);
}

void RequestQueue::DropLocked(uint64_t id, bool finished) {
  // Not yet handed to the engine: just drop it from the pending list.
  auto it = std::find_if(pending_add_.begin(), pending_add_.end(),
                         [id](const RequestSpec& s) { return s.id == id; });
  if (it != pending_add_.end()) {
    pending_add_.erase(it);
    ++dropped_;
  } else {
    pending_cancel_.push_back(id);
    pending_finished_ += finished;
  }
  cv_.notify_all();
}

StepPlan RequestQueue::TakePlan(int* finished, int* dropped) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  const bool check_clients = now - last_client_check_ >= kClientCheckInterval;
  if (check_clients) last_client_check_ = now;
  for (auto it = active_.begin(); check_clients && it != active_.end();) {
    if (it->second->ClientGone()) {
      it->second->MarkClientGone();
      DropLocked(it->first, /*finished=*/false);
      it = active_.erase(it);
    } else {
      ++it;
    }
  }
  StepPlan plan;
  plan.add.swap(pending_add_);
  plan.cancel.swap(pending_cancel_);
  if (finished != nullptr) *finished = pending_finished_;
  if (dropped != nullptr) *dropped = dropped_;
  pending_finished_ = dropped_ = 0;
  return plan;
}

void RequestQueue::WaitForWork(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return !pending_add_.empty() || !pending_cancel_.empty(); });
}

void RequestQueue::Deliver(const std::vector<TokenEvent>& events, const std::function<void(int)>& count) {
  std::lock_guard<std::mutex> lock(mu_);
  int finished = 0;
  for (const TokenEvent& ev : events)
    finished += ev.finish != FinishReason::kNone && active_.count(ev.id) > 0;
  count(finished);
  for (const TokenEvent& ev : events) {
    auto it = active_.find(ev.id);
    if (it == active_.end()) continue;  // cancelled meanwhile
    it->second->Push(ev);
    if (ev.finish != FinishReason::kNone) active_.erase(it);
  }
}

void RequestQueue::StopAdmission(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  admitting_ = false;
  closed_reason_ = reason;
}

std::vector<uint64_t> RequestQueue::AbortAll(const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> ids;
  for (auto& [id, ch] : active_) {
    ch->Abort(message);
    ids.push_back(id);
  }
  active_.clear();
  pending_add_.clear();
  pending_cancel_.clear();
  return ids;
}

size_t RequestQueue::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_.size();
}

}  // namespace tpserve
