// PlanThreads: which CPUs each rank's kernel threads get, from the affinity masks of the ranks on
// its host. Ranks with their own masks (bound by mpirun or Slurm) keep them; ranks that share one
// mask (unbound, maybe inside a cpuset) split it; nobody oversubscribes.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "apps/launch_check.h"

namespace tpserve {
namespace {

std::vector<int> Cpus(int first, int count) {
  std::vector<int> v(count);
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::vector<int> PlannedCpus(int requested, const std::vector<std::vector<int>>& masks, int index) {
  auto plan = PlanThreads(requested, masks, index);
  EXPECT_TRUE(plan.ok()) << plan.status().message();
  return plan.ok() ? plan->cpus : std::vector<int>{};
}

TEST(PlanThreads, UnboundRanksSplitTheHostsCpus) {
  const std::vector<std::vector<int>> masks = {Cpus(0, 8), Cpus(0, 8)};
  EXPECT_EQ(PlannedCpus(0, masks, 0), Cpus(0, 4));
  EXPECT_EQ(PlannedCpus(0, masks, 1), Cpus(4, 4));
}

// mpirun --bind-to none inside a container (or a Slurm job) limited to CPUs 8-15 of a bigger host:
// the ranks share the cpuset, each with half of it (not all of it each, twice over).
TEST(PlanThreads, UnboundRanksInsideACpusetSplitIt) {
  const std::vector<std::vector<int>> masks = {Cpus(8, 8), Cpus(8, 8)};
  EXPECT_EQ(PlannedCpus(0, masks, 0), Cpus(8, 4));
  EXPECT_EQ(PlannedCpus(0, masks, 1), Cpus(12, 4));
  EXPECT_EQ(PlannedCpus(1, masks, 1), Cpus(12, 1));
}

TEST(PlanThreads, BoundRanksKeepTheirCpus) {
  const std::vector<std::vector<int>> masks = {Cpus(0, 2), Cpus(2, 2), Cpus(4, 4)};
  EXPECT_EQ(PlannedCpus(0, masks, 0), Cpus(0, 2));
  EXPECT_EQ(PlannedCpus(0, masks, 1), Cpus(2, 2));
  EXPECT_EQ(PlannedCpus(0, masks, 2), Cpus(4, 4));
  EXPECT_EQ(PlannedCpus(1, masks, 2), Cpus(4, 1));
}

TEST(PlanThreads, SharingAndBoundRanksMixed) {
  const std::vector<std::vector<int>> masks = {Cpus(0, 4), Cpus(4, 4), Cpus(0, 4)};
  EXPECT_EQ(PlannedCpus(0, masks, 0), Cpus(0, 2));
  EXPECT_EQ(PlannedCpus(0, masks, 1), Cpus(4, 4));
  EXPECT_EQ(PlannedCpus(0, masks, 2), Cpus(2, 2));
}

TEST(PlanThreads, MoreRanksThanCpusRunOneUnpinnedThreadEach) {
  const std::vector<std::vector<int>> masks = {Cpus(0, 2), Cpus(0, 2), Cpus(0, 2)};
  for (int i = 0; i < 3; ++i) {
    auto plan = PlanThreads(0, masks, i);
    ASSERT_TRUE(plan.ok());
    EXPECT_EQ(plan->threads, 1);
    EXPECT_TRUE(plan->cpus.empty());
  }
}

TEST(PlanThreads, TooManyThreadsIsAnErrorThatNamesTheFix) {
  const std::vector<std::vector<int>> masks = {Cpus(0, 4), Cpus(0, 4)};
  auto plan = PlanThreads(3, masks, 1);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("--threads 3 needs 3 cores for this rank, but it has 2"),
            std::string::npos)
      << plan.status().message();
  EXPECT_NE(plan.status().message().find("lower --threads"), std::string::npos);
}

}  // namespace
}  // namespace tpserve
