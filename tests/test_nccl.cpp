// NcclComm on device buffers (label gpu). Skipped where no CUDA device is visible, or where the
// job has more ranks than GPUs (NCCL does not allow two ranks of one communicator on one GPU).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <numeric>

#include "comm/mpi_comm.h"
#include "comm/nccl_comm.h"
#include "test_util.h"

namespace tpserve {
namespace {

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = MpiComm::World();
    // Every rank must agree to skip, or the others would wait in ncclCommInitRank.
    float usable = NcclComm::DeviceCount() >= testing::GetMpiEnv()->local_size() ? 1.0f : 0.0f;
    ASSERT_TRUE(world_->AllReduceSum(&usable, 1).ok());
    if (usable < world_->size()) {
      GTEST_SKIP() << "needs one CUDA device per rank on each host (have " << NcclComm::DeviceCount() << ")";
    }
    auto c = NcclComm::Create(*world_, testing::GetMpiEnv()->local_rank());
    ASSERT_TRUE(c.ok()) << c.status().message();
    nccl_ = std::move(c).value();
  }
  std::unique_ptr<MpiComm> world_;
  std::unique_ptr<NcclComm> nccl_;
};

TEST_F(Nccl, AllReduceSumOddCount) {
  const size_t n = 4099;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>((world_->rank() + 1) * (i % 7));
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(nccl_->AllReduceSum(dev, n).ok());
  ASSERT_EQ(cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  const int s = world_->size();
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(host[i], s * (s + 1) / 2.0f * (i % 7));
  cudaFree(dev);
}

TEST_F(Nccl, AllGatherBroadcastGather) {
  const int s = world_->size(), r = world_->rank();
  const size_t n = 333;
  std::vector<int32_t> mine(n);
  std::iota(mine.begin(), mine.end(), r * 1000);
  int32_t *d_mine = nullptr, *d_all = nullptr;
  ASSERT_EQ(cudaMalloc(&d_mine, n * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_all, n * 4 * s), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_mine, mine.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(nccl_->AllGather(d_mine, n * 4, d_all).ok());
  std::vector<int32_t> all(n * s);
  ASSERT_EQ(cudaMemcpy(all.data(), d_all, n * 4 * s, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int q = 0; q < s; ++q) ASSERT_EQ(all[q * n + 5], q * 1000 + 5);
  ASSERT_TRUE(nccl_->Broadcast(d_mine, n * 4, 0).ok());
  ASSERT_EQ(cudaMemcpy(mine.data(), d_mine, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(mine[7], 7);
  std::vector<size_t> bytes(s, n * 4);
  ASSERT_TRUE(nccl_->Gather(d_mine, n * 4, d_all, bytes, 0).ok());
  EXPECT_TRUE(nccl_->Barrier().ok());
  cudaFree(d_mine);
  cudaFree(d_all);
}

}  // namespace
}  // namespace tpserve
