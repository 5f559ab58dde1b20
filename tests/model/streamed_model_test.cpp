// Streamed residency (streamed_model.h): a model whose blocks exist only
// while they run must give exactly the resident model's results, hold no
// more weight bytes than its plan, and refuse a cap it cannot meet.
#include "minipuzzle/streamed_model.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <tuple>

#include "checkpoint_test_util.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/evaluate.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/observers.h"
#include "streamed_test_plan.h"
#include "tiny_config.h"

namespace minipuzzle {
namespace {

using testing::fresh_dir;
using testing::tiny_config;

constexpr int64_t kVocab = 2 * kLmHeadSliceRows + 1000;

class Streamed : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_dir("mp_streamed_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    // A vocabulary of two and a half LM-head slices, so the head streams in pieces.
    nlohmann::json j = tiny_config("M*-M-M").to_json();
    j["vocab_size"] = kVocab;
    HybridLM m(ModelConfig::from_json(j, "tiny"));
    m->init_random(11);
    save_model(m, dir_ / "model", torch::kFloat32);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    for (int i = 0; i < 5; ++i) batches_.push_back(torch::randint(0, kVocab, {2, 13}, gen, torch::kInt64));
  }
  void TearDown() override { remove_tree(dir_); }

  ResidencyPlan streamed(int64_t group, int64_t head_rows) const { return testing::streamed_plan(group, head_rows); }

  std::filesystem::path dir_;
  std::vector<torch::Tensor> batches_;
};

std::vector<torch::Tensor> all_logits(ForwardModel& m, const std::vector<torch::Tensor>& batches) {
  std::vector<torch::Tensor> out(batches.size());
  std::vector<size_t> order;
  m.forward_logits(batches, [&](size_t i, const torch::Tensor& l) {
    order.push_back(i);
    out[i] = l.clone();
  });
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i) << "batches must arrive in order";
  return out;
}

TEST_F(Streamed, LogitsAreBitIdenticalToTheResidentModel) {
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    ForwardModel resident(dir_ / "model", dtype, torch::kCPU, ResidencyPlan{});
    const auto want = all_logits(resident, batches_);
    for (int64_t group : {1, 2, 5}) {
      for (int64_t head_rows : {kVocab, kLmHeadSliceRows, 2 * kLmHeadSliceRows}) {
        ForwardModel s(dir_ / "model", dtype, torch::kCPU, streamed(group, head_rows));
        const auto got = all_logits(s, batches_);
        for (size_t i = 0; i < want.size(); ++i)
          EXPECT_TRUE(torch::equal(got[i], want[i]))
              << "batch " << i << " group " << group << " head rows " << head_rows << " " << dtype;
      }
    }
  }
}

TEST_F(Streamed, HiddenStatesAreBitIdenticalToTheResidentModel) {
  ForwardModel resident(dir_ / "model", torch::kFloat32, torch::kCPU, ResidencyPlan{});
  ForwardModel s(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(2, kVocab));
  std::vector<torch::Tensor> want(batches_.size()), got(batches_.size());
  resident.forward_hidden(batches_, [&](size_t i, const torch::Tensor& h) { want[i] = h.clone(); });
  s.forward_hidden(batches_, [&](size_t i, const torch::Tensor& h) { got[i] = h.clone(); });
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(torch::equal(got[i], want[i])) << i;
}

// Records what every observation point saw, per layer, in arrival order.
struct Recorder : Observer {
  std::map<std::pair<int, int64_t>, std::vector<torch::Tensor>> seen;
  void observe(ObservePoint p, int64_t layer, const torch::Tensor& v) override {
    seen[{static_cast<int>(p), layer}].push_back(v.clone());
  }
};

TEST_F(Streamed, ObserversSeeTheSameValuesInTheSameOrderPerLayer) {
  // Importance statistics accumulate per layer over batches: layer-major
  // order keeps each layer's sequence of batches, so its sums are the same.
  ForwardModel resident(dir_ / "model", torch::kFloat32, torch::kCPU, ResidencyPlan{});
  ForwardModel s(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(3, kLmHeadSliceRows));
  Recorder a, b;
  resident.model()->observers().add(&a);
  s.model()->observers().add(&b);
  all_logits(resident, batches_);
  all_logits(s, batches_);
  ASSERT_EQ(a.seen.size(), b.seen.size());
  for (const auto& [key, values] : a.seen) {
    ASSERT_EQ(values.size(), b.seen[key].size());
    for (size_t i = 0; i < values.size(); ++i) EXPECT_TRUE(torch::equal(values[i], b.seen[key][i]));
  }
}

TEST_F(Streamed, EvaluateGivesTheResidentNumbers) {
  IndexedDatasetBuilder builder((dir_ / "data").string(), TokenDType::U16);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  auto t = torch::randint(0, kVocab, {400}, gen, torch::kInt64);
  builder.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
  builder.finish();
  auto data = IndexedDataset::open((dir_ / "data").string());
  EvalOptions o;
  o.seq_len = 16;
  o.batch = 2;
  ForwardModel resident(dir_ / "model", torch::kFloat32, torch::kCPU, ResidencyPlan{});
  ForwardModel s(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(4, kLmHeadSliceRows));
  const EvalResult want = evaluate(resident, *data, o), got = evaluate(s, *data, o);
  EXPECT_EQ(got.loss, want.loss);
  EXPECT_EQ(got.accuracy, want.accuracy);
  EXPECT_EQ(got.tokens, want.tokens);
}

void expect_same(const LogitComparison& got, const LogitComparison& want, const std::string& what) {
  EXPECT_EQ(got.kl_sum, want.kl_sum) << what;
  EXPECT_EQ(got.ce_reference_sum, want.ce_reference_sum) << what;
  EXPECT_EQ(got.ce_other_sum, want.ce_other_sum) << what;
  EXPECT_EQ(got.other_correct, want.other_correct) << what;
  EXPECT_EQ(got.agree, want.agree) << what;
  EXPECT_EQ(got.tokens, want.tokens) << what;
}

// compress's compare stage, streamed: a teacher and another checkpoint (of
// another shape, as a distilled student is) compared in passes over the two
// heads give compare_logits' sums, bit for bit, and so does the teacher
// against itself (the table's first row).
TEST_F(Streamed, HeadPassComparisonOfTwoCheckpointsEqualsCompareLogits) {
  nlohmann::json j = tiny_config("M-*M").to_json();
  j["vocab_size"] = kVocab;
  j["hidden_size"] = 24;
  HybridLM other(ModelConfig::from_json(j, "other"));
  other->init_random(3);
  save_model(other, dir_ / "other", torch::kFloat32);
  auto teacher = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  auto student = load_model(dir_ / "other", torch::kFloat32, torch::kCPU);
  std::vector<torch::Tensor> targets;
  for (const auto& b : batches_) targets.push_back(torch::roll(b, 1, 1));
  LogitComparison want, want_self;
  for (size_t i = 0; i < batches_.size(); ++i) {
    const auto th = teacher->forward_hidden(batches_[i]);
    want += compare_logits(teacher, th, student, student->forward_hidden(batches_[i]), targets[i]);
    want_self += compare_logits(teacher, th, teacher, th, targets[i]);
  }
  ASSERT_GT(want.kl_sum, 0.0);
  for (auto [group, head_rows, pass] : {std::tuple<int64_t, int64_t, uint64_t>{1, kLmHeadSliceRows, 1},
                                        {2, kLmHeadSliceRows, uint64_t{1} << 30}, {3, kVocab, 0}}) {
    const std::string what = fmt::format("group {} head rows {} pass {}", group, head_rows, pass);
    ForwardModel t(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(group, head_rows));
    std::vector<torch::Tensor> th(batches_.size());
    t.forward_hidden(batches_, [&](size_t i, const torch::Tensor& h) { th[i] = h; });
    ForwardModel s(dir_ / "other", torch::kFloat32, torch::kCPU, streamed(group, head_rows));
    const uint64_t budget = pass ? pass : comparison_head_pass_bytes(t.model()->config(), torch::kFloat32);
    expect_same(compare_with_head_passes(&t, th, s, batches_, targets, budget), want, what);
    expect_same(compare_with_head_passes(&t, th, t, batches_, targets, budget), want_self, what + " (self)");
  }
}

TEST_F(Streamed, HoldsAtMostTwoBlocksAndItsRowsAtATime) {
  ForwardModel resident(dir_ / "model", torch::kFloat32, torch::kCPU, ResidencyPlan{});
  ForwardModel s(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(2, kLmHeadSliceRows));
  all_logits(s, batches_);
  const ModelConfig& c = s.model()->config();
  uint64_t largest_block = 0;
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    uint64_t n = 0;
    for (const auto& p : resident.model()->layer(i)->parameters()) n += p.numel() * 4;
    largest_block = std::max(largest_block, n);
  }
  const uint64_t row = c.hidden_size * 4;
  // norm_f, two blocks in flight, or the embedding rows of a group (at most
  // 2 batches x 26 tokens) beside block 0's read-ahead, or two head slices.
  const uint64_t bound = row + std::max({2 * largest_block, 52 * row + largest_block, 2 * kLmHeadSliceRows * row});
  EXPECT_LE(s.peak_bytes_held(), bound);
  EXPECT_GE(s.peak_bytes_held(), 2 * kLmHeadSliceRows * row);
  EXPECT_LT(s.peak_bytes_held(), resident.plan().weight_bytes / 2);
  EXPECT_EQ(s.bytes_held(), row) << "everything but norm_f is released after a pass";
}

TEST(PlanResidency, StaysResidentWhenItFitsAndStreamsWhenNot) {
  const ModelConfig c = tiny_config("M*-M-M");
  ResidencyOptions o;
  o.batch = 1;
  o.seq_len = 16;
  o.batches = 100;
  const ResidencyPlan all = plan_residency(c, torch::kFloat32, o, torch::kCPU);
  EXPECT_FALSE(all.streamed);
  o.max_device_memory = all.weight_bytes + all.working_bytes;
  EXPECT_FALSE(plan_residency(c, torch::kFloat32, o, torch::kCPU).streamed);
  o.max_device_memory = all.weight_bytes + all.working_bytes - 1;
  const ResidencyPlan p = plan_residency(c, torch::kFloat32, o, torch::kCPU);
  EXPECT_TRUE(p.streamed);
  EXPECT_GE(p.group_batches, 1);
  EXPECT_LE(p.streaming_bytes + p.working_bytes + p.group_batches * p.activation_bytes_per_batch, *o.max_device_memory);
  EXPECT_NE(p.describe().find("weights streamed"), std::string::npos);
}

TEST(PlanResidency, ACapBelowOneBlockNamesTheSmallestThatWorks) {
  const ModelConfig c = tiny_config("M*-M-M");
  ResidencyOptions o;
  o.seq_len = 16;
  o.max_device_memory = 1000;
  try {
    plan_residency(c, torch::kFloat32, o, torch::kCPU);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("too small to stream this model"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("need at least"), std::string::npos) << e.what();
  }
}

TEST(PlanResidency, PercentOnTheCpuIsOfTheModelsWeights) {
  const ModelConfig c = tiny_config("M*-M-M");
  const uint64_t all = plan_residency(c, torch::kBFloat16, {}, torch::kCPU).weight_bytes;
  EXPECT_EQ(parse_max_device_memory("50%", c, torch::kBFloat16, torch::kCPU), all / 2);
  EXPECT_EQ(parse_max_device_memory("2MiB", c, torch::kBFloat16, torch::kCPU), 2u << 20);
  EXPECT_THROW(parse_max_device_memory("0%", c, torch::kBFloat16, torch::kCPU), InputError);
  EXPECT_THROW(parse_max_device_memory("lots", c, torch::kBFloat16, torch::kCPU), InputError);
}

}  // namespace
}  // namespace minipuzzle
