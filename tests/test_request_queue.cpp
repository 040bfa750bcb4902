// RequestQueue: requests whose client is gone leave at the next plan that asks (the engine asks at
// step boundaries, at most every kClientCheckInterval), whether the engine already runs them or not.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "server/request_queue.h"

namespace tpserve {
namespace {

RequestSpec Spec() {
  RequestSpec s;
  s.prompt = {1, 2, 3};
  return s;
}

TEST(RequestQueue, RunningRequestWhoseClientIsGoneIsCancelledInTheNextPlan) {
  RequestQueue queue(8);
  auto a = queue.Submit(Spec()), b = queue.Submit(Spec());
  ASSERT_TRUE(a.ok() && b.ok());
  std::atomic<bool> a_gone{false};
  (*a)->WatchClient([&] { return a_gone.load(); });
  (*b)->WatchClient([] { return false; });
  StepPlan first = queue.TakePlan();
  ASSERT_EQ(first.add.size(), 2u);
  EXPECT_TRUE(first.cancel.empty());
  a_gone = true;
  // A gateway thread already waiting on a's stream is woken by the next plan (it does not poll
  // the client).
  bool woken_gone = false;
  auto waited = std::chrono::steady_clock::duration::max();
  std::thread handler([&] {
    const auto t0 = std::chrono::steady_clock::now();
    woken_gone = (*a)->Wait(std::chrono::seconds(10)).client_gone;
    waited = std::chrono::steady_clock::now() - t0;
  });
  // Let it block in Wait; 50 ms is also past kClientCheckInterval, so the next plan asks again.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int finished = -1;
  StepPlan second = queue.TakePlan(&finished);
  handler.join();
  EXPECT_TRUE(woken_gone);
  EXPECT_LT(waited, std::chrono::seconds(5));
  EXPECT_TRUE(second.add.empty());
  ASSERT_EQ(second.cancel.size(), 1u);
  EXPECT_EQ(second.cancel[0], (*a)->id());
  EXPECT_EQ(finished, 0);  // a client cancel, not a request the gateway finished
  EXPECT_EQ(queue.active(), 1u);
  EXPECT_FALSE((*b)->Wait(std::chrono::milliseconds(1)).client_gone);
  // Cancelled once only: the handler's own Cancel afterwards finds nothing left to do.
  queue.Cancel((*a)->id());
  EXPECT_TRUE(queue.TakePlan().cancel.empty());
}

TEST(RequestQueue, PendingRequestWhoseClientIsGoneNeverReachesTheEngine) {
  RequestQueue queue(8);
  auto a = queue.Submit(Spec());
  ASSERT_TRUE(a.ok());
  (*a)->WatchClient([] { return true; });
  int dropped = -1;
  StepPlan plan = queue.TakePlan(nullptr, &dropped);
  EXPECT_TRUE(plan.add.empty());
  EXPECT_TRUE(plan.cancel.empty());  // the engine never saw it, so there is nothing to cancel
  EXPECT_EQ(dropped, 1) << "counted as cancelled all the same";
  EXPECT_EQ(queue.active(), 0u);
  queue.TakePlan(nullptr, &dropped);
  EXPECT_EQ(dropped, 0) << "counted once";
}

TEST(RequestQueue, AResetWatcherIsNeverAskedAgain) {
  RequestQueue queue(8);
  auto a = queue.Submit(Spec());
  ASSERT_TRUE(a.ok());
  int asked = 0;
  (*a)->WatchClient([&] {
    ++asked;
    return false;
  });
  EXPECT_FALSE((*a)->ClientGone());
  (*a)->WatchClient(nullptr);  // what the gateway handler does before it returns
  EXPECT_FALSE((*a)->ClientGone());
  queue.TakePlan();
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(queue.active(), 1u);
}

// The clients are asked at most every kClientCheckInterval, not at every step: a burst of plans
// asks once, and the first plan after the interval asks again.
TEST(RequestQueue, ClientsAreAskedAtMostEveryCheckInterval) {
  RequestQueue queue(8);
  auto a = queue.Submit(Spec());
  ASSERT_TRUE(a.ok());
  std::atomic<int> asked{0};
  (*a)->WatchClient([&] {
    ++asked;
    return false;
  });
  for (int i = 0; i < 100; ++i) queue.TakePlan();
  EXPECT_GE(asked.load(), 1);
  EXPECT_LT(asked.load(), 100);
  const int before = asked.load();
  std::this_thread::sleep_for(2 * RequestQueue::kClientCheckInterval);
  queue.TakePlan();
  EXPECT_EQ(asked.load(), before + 1);
}

// A request's last token can race its cancel (a client cancel, or the gateway ending the request
// at a stop string while the engine makes the token that ends it by length): the token is dropped
// and only the cancel counts, so every request is counted once, finished or cancelled.
TEST(RequestQueue, AFinishRacingACancelIsNotCountedAsFinished) {
  RequestQueue queue(8);
  auto a = queue.Submit(Spec()), b = queue.Submit(Spec());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(queue.TakePlan().add.size(), 2u);
  queue.Cancel((*a)->id(), /*finished=*/true);  // the gateway saw a stop string in a's stream
  const std::vector<TokenEvent> last = {{(*a)->id(), 7, 0.0f, FinishReason::kLength},
                                        {(*b)->id(), 8, 0.0f, FinishReason::kLength}};
  int counted = -1;
  queue.Deliver(last, [&](int finished) { counted = finished; });
  EXPECT_EQ(counted, 1) << "only b's finish reached a live request";
  int finished_by_gateway = -1;
  const StepPlan next = queue.TakePlan(&finished_by_gateway);
  ASSERT_EQ(next.cancel.size(), 1u);
  EXPECT_EQ(next.cancel[0], (*a)->id());
  EXPECT_EQ(finished_by_gateway, 1);
  EXPECT_EQ(queue.active(), 0u);
  const StreamUpdate b_update = (*b)->Wait(std::chrono::milliseconds(1));
  ASSERT_EQ(b_update.tokens.size(), 1u);
  EXPECT_EQ(b_update.finish, FinishReason::kLength);
}

}  // namespace
}  // namespace tpserve
