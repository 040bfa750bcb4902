// PlanThreads: which CPUs each rank's kernel threads get, from the places (host, affinity mask) of
// the world's ranks. Ranks with their own masks (bound by mpirun or Slurm) keep them; ranks on a
// host that share one mask (unbound, maybe inside a cpuset) split it; nobody oversubscribes.
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "apps/launch_check.h"

namespace tpserve {
namespace {

std::vector<int> Cpus(int first, int count) {
  std::vector<int> v(count);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Every rank's planned CPUs with `requested` threads equal want[rank].
void ExpectPlans(int requested, const std::vector<RankPlace>& places,
                 const std::vector<std::vector<int>>& want) {
  for (size_t r = 0; r < places.size(); ++r) {
    auto plan = PlanThreads(requested, places, static_cast<int>(r));
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    EXPECT_EQ(plan->cpus, want[r]) << "rank " << r << ", --threads " << requested;
  }
}

TEST(PlanThreads, UnboundRanksSplitTheHostsCpus) {
  ExpectPlans(0, {{"a", Cpus(0, 8)}, {"a", Cpus(0, 8)}}, {Cpus(0, 4), Cpus(4, 4)});
}

// mpirun --bind-to none inside a container (or a Slurm job) limited to CPUs 8-15 of a bigger host:
// the ranks share the cpuset, each with half of it (not all of it each, twice over).
TEST(PlanThreads, UnboundRanksInsideACpusetSplitIt) {
  const std::vector<RankPlace> places = {{"a", Cpus(8, 8)}, {"a", Cpus(8, 8)}};
  ExpectPlans(0, places, {Cpus(8, 4), Cpus(12, 4)});
  ExpectPlans(1, places, {Cpus(8, 1), Cpus(12, 1)});
}

TEST(PlanThreads, BoundRanksKeepTheirCpus) {
  const std::vector<RankPlace> places = {{"a", Cpus(0, 2)}, {"a", Cpus(2, 2)}, {"a", Cpus(4, 4)}};
  ExpectPlans(0, places, {Cpus(0, 2), Cpus(2, 2), Cpus(4, 4)});
  ExpectPlans(1, places, {Cpus(0, 1), Cpus(2, 1), Cpus(4, 1)});
}

TEST(PlanThreads, SharingAndBoundRanksMixed) {
  ExpectPlans(0, {{"a", Cpus(0, 4)}, {"a", Cpus(4, 4)}, {"a", Cpus(0, 4)}},
              {Cpus(0, 2), Cpus(4, 4), Cpus(2, 2)});
}

// The same mask on another host is another host's CPUs: only a rank's own host shares.
TEST(PlanThreads, RanksOnOtherHostsDoNotShare) {
  ExpectPlans(0, {{"a", Cpus(0, 4)}, {"b", Cpus(0, 4)}, {"a", Cpus(0, 4)}, {"b", Cpus(0, 4)}},
              {Cpus(0, 2), Cpus(0, 2), Cpus(2, 2), Cpus(2, 2)});
}

TEST(PlanThreads, MoreRanksThanCpusRunOneUnpinnedThreadEach) {
  const std::vector<RankPlace> places = {{"a", Cpus(0, 2)}, {"a", Cpus(0, 2)}, {"a", Cpus(0, 2)}};
  ExpectPlans(0, places, {{}, {}, {}});
  for (int r = 0; r < 3; ++r) {
    auto plan = PlanThreads(0, places, r);
    ASSERT_TRUE(plan.ok());
    EXPECT_EQ(plan->threads, 1);
  }
}

TEST(PlanThreads, TooManyThreadsIsAnErrorThatNamesTheFix) {
  auto plan = PlanThreads(3, {{"a", Cpus(0, 4)}, {"a", Cpus(0, 4)}}, 1);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("--threads 3 needs 3 cores for this rank, but it has 2"),
            std::string::npos)
      << plan.status().message();
  EXPECT_NE(plan.status().message().find("lower --threads"), std::string::npos);
}

}  // namespace
}  // namespace tpserve
