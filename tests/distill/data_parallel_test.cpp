// Data-parallel pieces that need no second process: the launcher
// environment, the per-rank split of a step's windows, the single-process
// no-op path, and the collective path on a one-rank Gloo group. The
// two-process runs are in test_data_parallel.py (dp_worker).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <numeric>
#include <string>

#include "minipuzzle/data_parallel.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace {

DistEnv parse(const std::map<std::string, std::string>& vars) {
  return DistEnv::from_lookup([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    parse(vars);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(DistEnv, NothingSetIsOneProcess) {
  const DistEnv e = parse({});
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_TRUE(e.master_addr.empty());
}

TEST(DistEnv, ReadsTorchrunVariables) {
  const DistEnv e = parse({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                           {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "node7");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(DistEnv, TorchrunAgentStore) {
  const DistEnv e = parse({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1234"},
                           {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "3"}});
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.restart_count, 3);
  EXPECT_FALSE(parse({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).agent_store);
}

TEST(DistEnv, TorchrunWinsOverSlurm) {
  const DistEnv e = parse({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "9"},
                           {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 2);
  EXPECT_EQ(e.local_rank, 1);  // LOCAL_RANK unset: the rank
}

TEST(DistEnv, FallsBackToSlurm) {
  const DistEnv e = parse({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"},
                           {"MASTER_ADDR", "n0"}, {"MASTER_PORT", "40000"}});
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 16);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_port, 40000);
  EXPECT_NE(error_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}}).find("job script"), std::string::npos);
}

TEST(DistEnv, OneLineErrorsOnInconsistentValues) {
  EXPECT_NE(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
                .find("rank 2 is outside world size 2"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}).find("MASTER_PORT"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "5"}}).find("MASTER_ADDR"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK='x' is not an integer"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}}).find("together"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("at least 1"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
                .find("not a TCP port"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "-1"}, {"MASTER_ADDR", "h"},
                      {"MASTER_PORT", "5"}})
                .find("local rank"),
            std::string::npos);
  // One process needs no rendezvous address.
  EXPECT_EQ(parse({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).world_size, 1);
  for (const auto& m : {error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}})}) EXPECT_EQ(m.find('\n'), std::string::npos);
}

TEST(DataParallelSlice, RanksTogetherCoverTheStepInOrder) {
  std::vector<uint64_t> starts(12);
  std::iota(starts.begin(), starts.end(), 100);
  for (int world : {1, 2, 3, 4, 6, 12}) {
    std::vector<uint64_t> joined;
    for (int r = 0; r < world; ++r) {
      auto mine = data_parallel_slice(starts, r, world);
      EXPECT_EQ(mine.size(), starts.size() / world);
      joined.insert(joined.end(), mine.begin(), mine.end());
    }
    EXPECT_EQ(joined, starts) << world;
  }
  EXPECT_EQ(data_parallel_slice(starts, 1, 4), (std::vector<uint64_t>{103, 104, 105}));
  EXPECT_THROW(data_parallel_slice(starts, 0, 5), InputError);
  EXPECT_THROW(data_parallel_slice(starts, 4, 4), InputError);
}

TEST(DataParallelSlice, LocalBatchChecksDivisibility) {
  EXPECT_EQ(data_parallel_local_batch(16, 2, 4), 4);
  EXPECT_EQ(data_parallel_local_batch(8, 8, 1), 8);
  EXPECT_THROW(data_parallel_local_batch(8, 4, 4), InputError);  // 2 windows per rank < micro 4
  EXPECT_THROW(data_parallel_local_batch(6, 1, 4), InputError);
}

TEST(DataParallel, SingleProcessIsANoOp) {
  DataParallel dp(DistEnv{}, torch::kCPU);
  EXPECT_FALSE(dp.active());
  EXPECT_EQ(dp.backend_name(), "none");
  EXPECT_TRUE(dp.is_root());
  auto p = torch::randn({3, 4}).requires_grad_();
  p.mutable_grad() = torch::ones({3, 4});
  std::vector<torch::Tensor> params{p};
  const auto before = p.detach().clone();
  dp.broadcast_parameters(params);
  dp.all_reduce_gradients(params);
  EXPECT_TRUE(torch::equal(p.detach(), before));
  EXPECT_TRUE(torch::equal(p.grad(), torch::ones({3, 4})));
  EXPECT_EQ(dp.all_reduce_sum(2.5), 2.5);
  auto stats = torch::tensor({1.0, 2.0});
  dp.all_reduce_sum_in_place(stats);
  EXPECT_TRUE(torch::equal(stats, torch::tensor({1.0, 2.0})));
  dp.barrier();
}

// The collective code path (buckets, fp32 accumulation of bf16, metrics) on
// a real one-rank Gloo group: every reduction is the identity.
TEST(DataParallel, OneRankGlooGroupKeepsValues) {
  DataParallelOptions o;
  o.force_group = true;
  o.bucket_bytes = 64;  // many buckets
  DataParallel dp(DistEnv{}, torch::kCPU, o);
  ASSERT_TRUE(dp.active());
  EXPECT_EQ(dp.backend_name(), "gloo");
  torch::manual_seed(3);
  std::vector<torch::Tensor> params{torch::randn({5, 7}).requires_grad_(), torch::randn({33}).requires_grad_(),
                                    torch::randn({4, 4}).to(torch::kBFloat16).requires_grad_(),
                                    torch::randn({2}).requires_grad_(), torch::randn({3})};
  std::vector<torch::Tensor> grads, values;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (i != 3 && params[i].requires_grad()) params[i].mutable_grad() = torch::randn_like(params[i]);
    grads.push_back(params[i].grad().defined() ? params[i].grad().clone() : torch::Tensor());
    values.push_back(params[i].detach().clone());
  }
  dp.broadcast_parameters(params);
  dp.all_reduce_gradients(params);
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(torch::equal(params[i].detach(), values[i])) << i;
    if (grads[i].defined()) {
      EXPECT_TRUE(torch::equal(params[i].grad(), grads[i])) << i;
    }
  }
  // A parameter without a grad gets zeros (same layout on every rank);
  // one that needs no grad is left alone.
  ASSERT_TRUE(params[3].grad().defined());
  EXPECT_EQ(params[3].grad().abs().sum().item<float>(), 0.0f);
  EXPECT_FALSE(params[4].grad().defined());
  std::vector<double> m{1.5, -2.0, 1e-300};
  dp.all_reduce_sum(m);
  EXPECT_EQ(m, (std::vector<double>{1.5, -2.0, 1e-300}));
  auto stats = torch::tensor({3.0, 0.25, -7.0}, torch::kFloat64);
  dp.all_reduce_sum_in_place(stats);
  EXPECT_TRUE(torch::equal(stats, torch::tensor({3.0, 0.25, -7.0}, torch::kFloat64)));
  dp.barrier();
}

TEST(DataParallel, RejectsBadRankAndMissingAddress) {
  DistEnv bad;
  bad.rank = 2;
  bad.world_size = 2;
  EXPECT_THROW(DataParallel(bad, torch::kCPU), InputError);
  DistEnv two;
  two.world_size = 2;  // no MASTER_ADDR/PORT
  EXPECT_THROW(DataParallel(two, torch::kCPU), InputError);
}

}  // namespace
}  // namespace minipuzzle
