// The flat layout of the sharded optimizer levels, and ShardedAdamW on one
// rank against the unsharded AdamW: every element gets the same update
// (clipping, weight decay by parameter, bf16 masters), through the real
// collectives of a one-rank Gloo group with buckets cut inside parameters;
// its state saved as a rank's shard and loaded back continues bit for bit.
// (Several ranks: tests/distill/test_sharded_distill.py.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "minipuzzle/adamw.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/flat_parameter_layout.h"
#include "minipuzzle/sharded_adamw.h"
#include "minipuzzle/sharded_checkpoint.h"

using namespace minipuzzle;
namespace fs = std::filesystem;

namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

Named sized(const std::vector<int64_t>& sizes) {
  Named out;
  for (std::size_t i = 0; i < sizes.size(); ++i) out.emplace_back("p" + std::to_string(i), torch::zeros({sizes[i]}));
  return out;
}

// A matrix that decays, a norm and a conv1d weight that do not.
Named model(torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  Named m = {{"layers.0.mixer.in_proj.weight", torch::randn({6, 5})},
             {"layers.0.norm.weight", torch::randn({7})},
             {"layers.0.mixer.conv1d.weight", torch::randn({3, 1, 4})},
             {"lm_head.weight", torch::randn({9, 6})}};
  for (auto& [name, p] : m) p = p.to(dtype).set_requires_grad(true);
  return m;
}

void set_grads(Named& m, int step) {
  torch::manual_seed(100 + step);
  for (auto& [name, p] : m) p.mutable_grad() = (torch::randn(p.sizes()) * 3).to(p.scalar_type());
}

DataParallel one_rank_group(int64_t bucket_bytes) {
  DataParallelOptions o;
  o.force_group = true;  // the collectives run, over one rank
  o.bucket_bytes = bucket_bytes;
  return DataParallel(DistEnv{}, torch::kCPU, o);
}

}  // namespace

TEST(FlatParameterLayout, RangesArePaddedAndPiecesCoverEveryElementOnce) {
  const FlatParameterLayout l = FlatParameterLayout::of(sized({5, 3, 7}), 4);
  EXPECT_EQ(l.total, 15);
  EXPECT_EQ(l.shard, 4);
  EXPECT_EQ(l.padded(), 16);
  const auto second = l.pieces(l.begin(1), l.end(1));
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0].entry, 0u);
  EXPECT_EQ(second[0].start, 4);
  EXPECT_EQ(second[0].numel, 1);
  EXPECT_EQ(second[1].entry, 1u);
  EXPECT_EQ(second[1].start, 0);
  EXPECT_EQ(second[1].numel, 3);
  EXPECT_EQ(second[1].flat, 5);
  const auto last = l.pieces(l.begin(3), l.end(3));  // [12, 16): three elements and one of padding
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].entry, 2u);
  EXPECT_EQ(last[0].start, 4);
  EXPECT_EQ(last[0].numel, 3);
  std::vector<int> seen(15, 0);
  for (int r = 0; r < 4; ++r)
    for (const auto& p : l.pieces(l.begin(r), l.end(r)))
      for (int64_t i = 0; i < p.numel; ++i) ++seen[static_cast<std::size_t>(p.flat + i)];
  for (int s : seen) EXPECT_EQ(s, 1);
}

TEST(FlatParameterLayout, ManifestLayoutMatchesAtAnyWorldSizeButNotAnotherModel) {
  const FlatParameterLayout l = FlatParameterLayout::of(sized({5, 3, 7}), 4);
  EXPECT_EQ(l.difference(l.to_json()), "");
  EXPECT_EQ(l.difference(FlatParameterLayout::of(sized({5, 3, 7}), 3).to_json()), "");
  EXPECT_NE(l.difference(FlatParameterLayout::of(sized({5, 4, 7}), 4).to_json()), "");
  EXPECT_NE(l.difference(FlatParameterLayout::of(sized({5, 3}), 4).to_json()), "");
  auto j = l.to_json();
  j["shard"] = 5;  // inconsistent with its world size
  EXPECT_NE(l.difference(j), "");
  EXPECT_NE(l.difference(nlohmann::json::object()), "");
}

class ShardedAdamWOneRank : public ::testing::TestWithParam<std::tuple<ShardLevel, torch::ScalarType>> {};

TEST_P(ShardedAdamWOneRank, EveryElementGetsTheUnshardedUpdate) {
  const auto [level, dtype] = GetParam();
  Named a = model(dtype, 1), b = model(dtype, 1);
  AdamWOptions opt;
  opt.weight_decay = 0.3;
  AdamW whole(a, opt);
  // 64-byte buckets: 16 elements, cut inside the parameters.
  DataParallel dp = one_rank_group(64);
  ShardedAdamW sharded(b, opt, dp, level);
  for (int step = 1; step <= 3; ++step) {
    set_grads(a, step);
    set_grads(b, step);
    sharded.finish();
    if (level == ShardLevel::Gradients)
      for (const auto& [name, p] : b) EXPECT_FALSE(p.grad().defined()) << name << ": kept whole";
    const double na = whole.clip_grad_norm_on_device(1.0).item<double>();
    const double nb = sharded.clip_grad_norm_on_device(1.0).item<double>();
    EXPECT_DOUBLE_EQ(na, nb);
    whole.step(1e-2);
    sharded.step(1e-2);
    whole.zero_grad();
    sharded.zero_grad();
    for (std::size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first << " step " << step;
  }
  EXPECT_EQ(sharded.steps(), 3);
  const auto bytes = sharded.state_bytes();
  EXPECT_EQ(bytes.moments, 8 * sharded.layout().total);  // one rank owns everything, no padding
  EXPECT_EQ(bytes.master, dtype == torch::kFloat32 ? 0 : 4 * sharded.layout().total);
}

INSTANTIATE_TEST_SUITE_P(Levels, ShardedAdamWOneRank,
                         ::testing::Combine(::testing::Values(ShardLevel::Optimizer, ShardLevel::Gradients),
                                            ::testing::Values(torch::kFloat32, torch::kBFloat16)));

TEST(ShardedAdamW, SavedShardLoadsBackAndContinuesBitForBit) {
  const fs::path dir = fs::temp_directory_path() / ("sharded_adamw_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
    Named a = model(dtype, 2);
    DataParallel dp = one_rank_group(64);
    ShardedAdamW first(a, {}, dp, ShardLevel::Optimizer);
    for (int step = 1; step <= 2; ++step) {
      set_grads(a, step);
      first.finish();
      first.clip_grad_norm_on_device(1.0);
      first.step(1e-2);
      first.zero_grad();
    }
    const fs::path file = dir / optimizer_shard_file_name(0, 1);
    ShardedAdamW::write_state(first.snapshot(), first.layout(), 0, file);
    const auto manifest = optimizer_manifest(first.layout(), ShardLevel::Optimizer, 2, {shard_file_record(file)});
    EXPECT_EQ(check_optimizer_shard(dir, manifest, 0), "");
    write_file_atomic(dir / kOptimizerManifest, manifest.dump());
    // A copy of the weights as they are now, and an optimizer that loads the shard.
    Named b;
    for (const auto& [name, p] : a) b.emplace_back(name, p.detach().clone().set_requires_grad(true));
    ShardedAdamW second(b, {}, dp, ShardLevel::Optimizer);
    second.load(dir, read_optimizer_manifest(dir, second.layout(), ShardLevel::Optimizer));
    EXPECT_EQ(second.steps(), 2);
    set_grads(a, 3);
    set_grads(b, 3);
    for (ShardedAdamW* o : {&first, &second}) {
      o->finish();
      o->clip_grad_norm_on_device(1.0);
      o->step(1e-2);
    }
    for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    // Another level than the manifest's, and a damaged file, are named.
    EXPECT_THROW(read_optimizer_manifest(dir, second.layout(), ShardLevel::Gradients), InputError);
    const auto size = fs::file_size(file);
    fs::resize_file(file, size - 8);
    EXPECT_NE(check_optimizer_shard(dir, manifest, 0).find(file.filename().string()), std::string::npos);
  }
  std::error_code ec;
  fs::remove(dir / optimizer_shard_file_name(0, 1), ec);
  fs::remove(dir / kOptimizerManifest, ec);
  fs::remove(dir, ec);
}
