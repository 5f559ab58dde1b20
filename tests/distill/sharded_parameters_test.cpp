// --shard parameters on one rank over a Gloo group of one (the collectives
// run): the unit-by-unit forward gives the plain model's hidden states, the
// checkpointed backward's reduced gradients are the plain model's gradients
// bit for bit, every parameter is a placeholder again afterwards, and the
// gathered and reduce buffers never exceed two neighbouring units.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>

#include "../model/tiny_config.h"
#include "cpu_allocation_tracker.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/sharded_parameters.h"
#include "minipuzzle/training_memory_plan.h"

namespace minipuzzle {
namespace {

namespace fs = std::filesystem;

DataParallel one_rank_group(int64_t bucket_bytes = 25 << 20) {
  DataParallelOptions o;
  o.force_group = true;
  o.bucket_bytes = bucket_bytes;
  return DataParallel(DistEnv{}, torch::kCPU, o);
}

int64_t largest_pair(const ModelConfig& c) {
  const auto u = parameter_unit_numels(c);
  int64_t most = 0;
  for (std::size_t i = 1; i < u.size(); ++i) most = std::max(most, u[i - 1] + u[i]);
  return most;
}

class ShardedParametersOneRank : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mp_zero3_" + std::to_string(::getpid()));
    cfg_ = testing::tiny_config("M*-M-M-M-");
    plain_ = HybridLM(cfg_);
    plain_->init_random(5);
    save_model(plain_, dir_, torch::kFloat32);
  }
  void TearDown() override { remove_tree(dir_); }

  fs::path dir_;
  ModelConfig cfg_;
  HybridLM plain_{nullptr};
};

TEST_F(ShardedParametersOneRank, UnitByUnitEqualsThePlainModel) {
  DataParallel dp = one_rank_group();
  ASSERT_TRUE(dp.active());
  auto gathered = std::make_shared<GatheredBytes>();
  ShardedParameters units(HybridLM(cfg_, torch::kFloat32, /*placeholders=*/true), dp, /*trainable=*/true, gathered);
  units.load(CheckpointReader::open(dir_));
  const FlatParameterLayout& layout = units.layout();
  torch::Tensor reduced = torch::zeros({layout.shard});
  units.set_gradient_sink([&](int64_t lo, const torch::Tensor& mean) {
    reduced.narrow(0, lo, mean.numel()).add_(mean);
  });
  for (const auto& [name, p] : units.named()) EXPECT_LE(p.storage().nbytes(), 4u) << name;

  torch::manual_seed(3);
  const torch::Tensor tokens = torch::randint(0, cfg_.vocab_size, {2, 24}, torch::kInt64);
  plain_->train();
  const torch::Tensor ha = plain_->forward_hidden(tokens);
  plain_->lm_head(ha).logsumexp(-1).mean().backward();

  units.model()->train();
  const torch::Tensor hb = units.forward_hidden(tokens);
  EXPECT_TRUE(torch::equal(ha, hb));
  units.model()->lm_head(hb).logsumexp(-1).mean().backward();
  units.finish_backward();

  std::vector<torch::Tensor> expected;
  for (const auto& p : plain_->parameters()) expected.push_back(p.grad().reshape({-1}));
  const torch::Tensor want = torch::cat(expected);
  ASSERT_EQ(want.numel(), layout.total);
  // The checkpointed recompute runs the same ops: the same bits.
  EXPECT_TRUE(torch::equal(reduced.narrow(0, 0, layout.total), want))
      << (reduced.narrow(0, 0, layout.total) - want).abs().max().item<float>();

  // Nothing stays gathered, no parameter keeps a gradient.
  for (const auto& [name, p] : units.named()) {
    EXPECT_LE(p.storage().nbytes(), 4u) << name;
    EXPECT_FALSE(p.grad().defined()) << name;
  }
  EXPECT_EQ(gathered->now, 0);
  // Two neighbouring units at most, and each pair is held at some point.
  EXPECT_EQ(gathered->peak, 4 * largest_pair(cfg_));
  EXPECT_EQ(units.reduce_peak_bytes(), 4 * largest_pair(cfg_));
  EXPECT_EQ(units.shard_bytes(), 4 * layout.shard);

  // One tensor gathered whole, as the checkpoint writer asks for it.
  const auto plain_named = plain_->named_parameters();
  for (std::size_t i = 0; i < layout.entries.size(); ++i)
    EXPECT_TRUE(torch::equal(units.gather_tensor(i), plain_named[layout.entries[i].name])) << layout.entries[i].name;
}

// --bucket-size smaller than a tensor: each unit's gradient goes out in
// buckets of 250 fp32 elements, cut across tensor boundaries; the reduced
// gradient is the same bits, and two buckets are in flight at most.
TEST_F(ShardedParametersOneRank, SmallBucketsCutTheUnitsAndGiveTheSameGradients) {
  DataParallel dp = one_rank_group(/*bucket_bytes=*/1001);
  ShardedParameters units(HybridLM(cfg_, torch::kFloat32, /*placeholders=*/true), dp, /*trainable=*/true,
                          std::make_shared<GatheredBytes>());
  units.load(CheckpointReader::open(dir_));
  torch::Tensor reduced = torch::zeros({units.layout().shard});
  int64_t calls = 0;
  units.set_gradient_sink([&](int64_t lo, const torch::Tensor& mean) {
    EXPECT_LE(mean.numel(), 250);
    reduced.narrow(0, lo, mean.numel()).add_(mean);
    ++calls;
  });
  torch::manual_seed(3);
  const torch::Tensor tokens = torch::randint(0, cfg_.vocab_size, {2, 24}, torch::kInt64);
  plain_->train();
  plain_->lm_head(plain_->forward_hidden(tokens)).logsumexp(-1).mean().backward();
  units.model()->train();
  units.model()->lm_head(units.forward_hidden(tokens)).logsumexp(-1).mean().backward();
  units.finish_backward();
  std::vector<torch::Tensor> expected;
  for (const auto& p : plain_->parameters()) expected.push_back(p.grad().reshape({-1}));
  EXPECT_TRUE(torch::equal(reduced.narrow(0, 0, units.layout().total), torch::cat(expected)));
  EXPECT_GT(calls, units.layout().total / 250);
  EXPECT_EQ(units.reduce_peak_bytes(), 2 * 250 * 4);
}

TEST_F(ShardedParametersOneRank, EvaluationWithoutGradHoldsTheHeadUntilReleased) {
  DataParallel dp = one_rank_group();
  ShardedParameters units(HybridLM(cfg_, torch::kFloat32, true), dp, /*trainable=*/false, nullptr);
  units.load(CheckpointReader::open(dir_));
  const torch::Tensor tokens = torch::randint(0, cfg_.vocab_size, {1, 16}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const torch::Tensor h = units.forward_hidden(tokens);
  EXPECT_TRUE(torch::equal(units.model()->lm_head(h), plain_->lm_head(plain_->forward_hidden(tokens))));
  EXPECT_GT(units.model()->lm_head_weights->weight.storage().nbytes(), 4u);
  units.release(units.head_unit());
  EXPECT_LE(units.model()->lm_head_weights->weight.storage().nbytes(), 4u);
  // A rank without a window takes part in the gathers only.
  EXPECT_FALSE(units.forward_hidden(torch::Tensor()).defined());
  units.release(units.head_unit());
}

// Seen from the CPU allocator, not from the class's own count: a forward
// holds this rank's range plus at most two neighbouring units (and a few
// tokens' activations), far less than the model.
TEST_F(ShardedParametersOneRank, TheAllocatorSeesTwoUnitsAtMost) {
  at::set_num_threads(1);
  DataParallel dp = one_rank_group();
  ShardedParameters units(HybridLM(cfg_, torch::kFloat32, true), dp, /*trainable=*/false, nullptr);
  units.load(CheckpointReader::open(dir_));
  const torch::Tensor tokens = torch::randint(0, cfg_.vocab_size, {1, 4}, torch::kInt64);
  torch::NoGradGuard no_grad;
  int64_t peak = 0;
  {
    testing::CpuAllocationTracker::Scope scope;
    units.forward_hidden(tokens);
    units.release(units.head_unit());
    peak = scope->peak();
    // Everything gathered is freed again; what stays are the one-element
    // placeholders that the parameters hold now.
    EXPECT_LE(scope->current(), 8 * static_cast<int64_t>(units.named().size()));
  }
  const int64_t pair = 4 * largest_pair(cfg_), model = 4 * count_parameters(cfg_).total;
  EXPECT_GE(peak, pair);
  EXPECT_LE(peak, pair + (32 << 10)) << "model " << model;
  EXPECT_LT(peak, model / 2);
}

}  // namespace
}  // namespace minipuzzle
