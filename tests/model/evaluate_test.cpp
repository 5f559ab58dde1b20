// `minipuzzle eval`'s loop (evaluate.h) against the same sums taken window
// by window, and, on a GPU, that it never waits for the device per window.
#include "minipuzzle/evaluate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "checkpoint_test_util.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/indexed_dataset.h"
#include "tiny_config.h"

#if MINIPUZZLE_TEST_CUDA_SYNCS
#include "cuda_sync_counter.h"
#endif

namespace minipuzzle {
namespace {

using testing::fresh_dir;
using testing::tiny_config;

class Evaluate : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_dir("mp_evaluate_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    IndexedDatasetBuilder b((dir_ / "data").string(), TokenDType::U16);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    for (int d = 0; d < 3; ++d) {
      auto t = torch::randint(0, 97, {150}, gen, torch::kInt64);
      b.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    }
    b.finish();
    data_ = IndexedDataset::open((dir_ / "data").string());
    model_ = HybridLM(tiny_config("M*-M-"));
    model_->init_random(3);
  }
  void TearDown() override { remove_tree(dir_); }

  std::filesystem::path dir_;
  std::shared_ptr<IndexedDataset> data_;
  HybridLM model_{nullptr};
};

TEST_F(Evaluate, MatchesTheWindowByWindowSums) {
  EvalOptions o;
  o.seq_len = 16;
  o.batch = 3;  // the last batch is short: 28 windows of 16 + 1 fit in 450 tokens
  const EvalResult r = evaluate(model_, *data_, o);
  ASSERT_EQ(r.windows, 28u);
  EXPECT_EQ(r.tokens, 28u * 16);
  torch::NoGradGuard ng;
  double loss = 0;
  int64_t correct = 0;
  for (int64_t w = 0; w < 28; ++w) {
    std::vector<int64_t> ids(17);
    data_->read_flat(static_cast<uint64_t>(w * 16), 17, ids.data());
    auto row = torch::tensor(ids).unsqueeze(0);
    auto logits = model_->forward(row.narrow(1, 0, 16)).reshape({16, -1});
    auto t = row.narrow(1, 1, 16).reshape({-1});
    loss += torch::nn::functional::cross_entropy(
                logits, t, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += logits.argmax(-1).eq(t).sum().item<int64_t>();
  }
  EXPECT_NEAR(r.loss, loss / (28 * 16), 1e-6);
  EXPECT_NEAR(r.perplexity, std::exp(loss / (28 * 16)), 1e-5);
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(correct) / (28 * 16));
  EXPECT_GE(r.seconds, 0.0);
  // Warm-up passes change the clock, never the scores.
  o.warmup_batches = 2;
  const EvalResult w = evaluate(model_, *data_, o);
  EXPECT_EQ(w.loss, r.loss);
  EXPECT_EQ(w.accuracy, r.accuracy);
  EXPECT_EQ(w.tokens, r.tokens);
}

TEST_F(Evaluate, BadOptionsAreInputErrors) {
  EvalOptions o;
  o.seq_len = 0;
  EXPECT_THROW(evaluate(model_, *data_, o), InputError);
  o.seq_len = 16;
  o.batch = 0;
  EXPECT_THROW(evaluate(model_, *data_, o), InputError);
  o.batch = 1;
  o.seq_len = 450;  // no window of 450 + 1 tokens
  EXPECT_THROW(evaluate(model_, *data_, o), InputError);
  o.seq_len = 16;
  o.max_tokens = 8;  // less than one window
  EXPECT_THROW(evaluate(model_, *data_, o), InputError);
  o.max_tokens = 0;
  o.warmup_batches = -1;
  EXPECT_THROW(evaluate(model_, *data_, o), InputError);
}

// A vocabulary of two and a half LM-head slices, so eval's log-sum-exp runs
// over several slices, and targets drawn from all of them.
class EvaluateOverHeadSlices : public ::testing::Test {
 protected:
  static constexpr int64_t kVocab = 2 * kLmHeadSliceRows + 1000;
  void SetUp() override {
    dir_ = fresh_dir("mp_evaluate_slices_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    IndexedDatasetBuilder b((dir_ / "data").string(), TokenDType::U16);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    auto t = torch::randint(0, kVocab, {200}, gen, torch::kInt64);
    t.narrow(0, 0, 40).zero_();  // token 0 as a target: the tie test below counts it
    b.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    b.finish();
    data_ = IndexedDataset::open((dir_ / "data").string());
    nlohmann::json j = tiny_config("M*-").to_json();
    j["vocab_size"] = kVocab;
    model_ = HybridLM(ModelConfig::from_json(j, "tiny"));
    model_->init_random(5);
  }
  void TearDown() override { remove_tree(dir_); }

  std::filesystem::path dir_;
  std::shared_ptr<IndexedDataset> data_;
  HybridLM model_{nullptr};
};

TEST_F(EvaluateOverHeadSlices, MatchesCrossEntropyOverWholeRows) {
  EvalOptions o;
  o.seq_len = 24;
  o.batch = 2;
  const EvalResult r = evaluate(model_, *data_, o);
  ASSERT_EQ(r.windows, 8u);
  torch::NoGradGuard ng;
  double loss = 0;
  int64_t correct = 0;
  for (int64_t w = 0; w < 8; ++w) {
    std::vector<int64_t> ids(25);
    data_->read_flat(static_cast<uint64_t>(w * 24), 25, ids.data());
    auto row = torch::tensor(ids).unsqueeze(0);
    auto logits = model_->forward(row.narrow(1, 0, 24)).reshape({24, -1});
    auto t = row.narrow(1, 1, 24).reshape({-1});
    loss += torch::nn::functional::cross_entropy(
                logits.to(torch::kDouble), t, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += logits.argmax(-1).eq(t).sum().item<int64_t>();
  }
  // fp32 rounding of the per-slice exponential sums, nothing more.
  EXPECT_NEAR(r.loss, loss / (8 * 24), 1e-6 * r.loss);
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(correct) / (8 * 24));
}

TEST_F(EvaluateOverHeadSlices, TiesGoToTheFirstTokenAsArgmaxPicksIt) {
  // A zero head: every logit ties, in every slice. The prediction is token 0
  // (argmax over the whole row), the loss log(vocab).
  {
    torch::NoGradGuard ng;
    model_->lm_head_weights->weight.zero_();
  }
  EvalOptions o;
  o.seq_len = 24;
  const EvalResult r = evaluate(model_, *data_, o);
  std::vector<int64_t> ids(8 * 24 + 1);
  data_->read_flat(0, ids.size(), ids.data());
  const auto zeros = std::count(ids.begin() + 1, ids.end(), int64_t{0});
  ASSERT_GT(zeros, 0);
  EXPECT_DOUBLE_EQ(r.accuracy, static_cast<double>(zeros) / (8 * 24));
  EXPECT_NEAR(r.loss, std::log(static_cast<double>(kVocab)), 1e-9);
}

TEST(EvalPlan, CountsOneHeadSliceOfLogitsNotTheBatchs) {
  // One slice of 8192 columns for at most kEvalChunkRows tokens, and a
  // temporary: bounded whatever the batch.
  EXPECT_EQ(eval_logit_bytes(131072, 256), uint64_t{2} * 256 * kLmHeadSliceRows * 4);
  EXPECT_EQ(eval_logit_bytes(131072, 1 << 20), uint64_t{2} * kEvalChunkRows * kLmHeadSliceRows * 4);
  EXPECT_EQ(eval_logit_bytes(97, 16), uint64_t{2} * 16 * 97 * 4);  // a vocabulary narrower than a slice
  // The plan's working memory takes it in place of the batch's logits.
  nlohmann::json j = tiny_config("M*-").to_json();
  j["vocab_size"] = 131072;
  const ModelConfig c = ModelConfig::from_json(j, "tiny");
  ResidencyOptions o;
  o.batch = 2;
  o.seq_len = 128;
  const ResidencyPlan whole = plan_residency(c, torch::kFloat32, o, torch::kCPU);
  o.logit_bytes = eval_logit_bytes(c.vocab_size, 256);
  const ResidencyPlan sliced = plan_residency(c, torch::kFloat32, o, torch::kCPU);
  EXPECT_EQ(whole.working_bytes - sliced.working_bytes, uint64_t{256} * 2 * 131072 * 4 - *o.logit_bytes);
}

#if MINIPUZZLE_TEST_CUDA_SYNCS
TEST_F(Evaluate, CudaWaitsOnlyAtTheEnd) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  model_->to(torch::kCUDA);
  EvalOptions o;
  o.seq_len = 16;
  auto syncs = [&](uint64_t windows) {
    o.max_tokens = windows * 16;
    testing::CudaSyncCounter counter;
    EXPECT_EQ(evaluate(model_, *data_, o).windows, windows);
    return std::make_pair(counter.count, counter.where);
  };
  syncs(1);  // warm-up: the first pinned buffers and kernels
  const auto [one, one_sites] = syncs(1);
  const auto [many, many_sites] = syncs(12);
  EXPECT_EQ(many, one) << "syncs past the smaller count:\n" << testing::CudaSyncCounter::format_sites(many_sites, one);
  EXPECT_GT(one, 0) << "the counter saw nothing (is the sync debug mode still reported as a warning?)";
}
#endif

}  // namespace
}  // namespace minipuzzle
