// GoogleTest main for tests that run under mpirun: initialises MPI (FUNNELED, as tpserve does)
// and keeps the console output to rank 0. A failure on any rank fails the process, and so the job.
#include <gtest/gtest.h>

#include "comm/mpi_comm.h"
#include "test_util.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto env = tpserve::MpiEnv::Init(&argc, &argv);
  if (!env.ok()) {
    fprintf(stderr, "%s\n", env.status().message().c_str());
    return 1;
  }
  tpserve::testing::SetMpiEnv(env->get());
  if ((*env)->world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    GTEST_FLAG_SET(output, "");  // only rank 0 writes --gtest_output files
  }
  const int rc = RUN_ALL_TESTS();
  // Every rank must agree on the outcome; a rank-local failure makes the whole job fail.
  auto world = tpserve::MpiComm::World();
  float failed = rc != 0 ? 1.0f : 0.0f;
  (void)world->AllReduceSum(&failed, 1);
  return failed > 0 ? 1 : 0;
}
