// Candidate ranking on data (candidate_ranking.h), streamed: the parent read a
// block at a time and each candidate cut from the parent's checkpoint as its
// blocks run must measure exactly what the resident ranking measures (the
// parent loaded, each candidate pruned in memory), holding a few blocks.
#include "minipuzzle/candidate_ranking.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "../model/streamed_test_plan.h"
#include "../model/tiny_config.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/prune_plan.h"
#include "minipuzzle/score_importance.h"

namespace minipuzzle {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kVocab = 2 * kLmHeadSliceRows + 700;  // the head streams in pieces

class StreamedRanking : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mp_rank_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    nlohmann::json j = testing::tiny_config("M*-M-").to_json();
    j["vocab_size"] = kVocab;
    HybridLM m(ModelConfig::from_json(j, "tiny"));
    m->init_random(5);
    save_model(m, dir_ / "model", torch::kFloat32);
    IndexedDatasetBuilder b((dir_ / "data").string(), TokenDType::I32);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    for (int d = 0; d < 4; ++d) {
      auto t = torch::randint(0, kVocab, {80}, gen, torch::kInt64);
      b.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    }
    b.finish();
    data_ = IndexedDataset::open((dir_ / "data").string());
    ScoreOptions so;
    so.samples = 4;
    so.seq_len = 16;
    so.batch = 2;
    scores_ = score_importance(m, *data_, so);
    // Candidates that cut every kind of tensor: hidden channels (embedding,
    // head, norms, every projection), a dropped layer, FFN neurons, Mamba
    // heads and head dims, attention heads.
    for (const std::vector<std::string>& sets :
         {std::vector<std::string>{"hidden_size=24", "drop_layers=3"},
          std::vector<std::string>{"intermediate_size=32", "mamba_num_heads=2", "num_attention_heads=2"},
          std::vector<std::string>{"mamba_head_dim=4", "drop_layers=1", "hidden_size=20"}}) {
      const PrunePlan p = plan_from_set(m->config(), scores_, sets);
      Candidate c;
      c.rank = static_cast<int64_t>(result_.candidates.size()) + 1;
      c.config = p.target;
      c.kept_layers = p.kept_layers;
      c.why = "test";
      result_.candidates.push_back(c);
    }
    for (const auto& p : m->parameters()) weights_ += static_cast<uint64_t>(p.numel() * p.element_size());
  }
  void TearDown() override { remove_tree(dir_); }

  RankOptions options() const {
    RankOptions o;
    o.tokens = 5 * 16;  // five windows: batches of 2 leave a short last batch
    o.seq_len = 16;
    o.batch = 2;
    return o;
  }

  fs::path dir_;
  std::shared_ptr<IndexedDataset> data_;
  ImportanceScores scores_;
  SearchResult result_;
  uint64_t weights_ = 0;
};

TEST_F(StreamedRanking, MeasuresAreBitIdenticalToTheResidentRanking) {
  SearchResult want = result_;
  auto parent = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  rank_candidates_on_data(parent, scores_, want, *data_, options());
  ASSERT_GT(want.candidates[0].measured.at("kl"), 0.0);
  struct Case {
    int64_t group, head_rows;
    uint64_t pass_bytes;
  };
  // Groups of 1/2/3 batches (3 leaves a short last group); the head in
  // 8192-row pieces, in two pieces, or whole; one chunk per head pass or
  // every chunk of a group in one.
  for (const Case& k : {Case{1, kLmHeadSliceRows, 1}, Case{2, kLmHeadSliceRows, uint64_t{1} << 30},
                        Case{3, 2 * kLmHeadSliceRows, 0}, Case{2, kVocab, 0}}) {
    SCOPED_TRACE(fmt::format("group {}, head rows {}, pass bytes {}", k.group, k.head_rows, k.pass_bytes));
    SearchResult got = result_;
    RankOptions o = options();
    o.head_pass_bytes = k.pass_bytes;
    const uint64_t held = rank_candidates_on_data(dir_ / "model", torch::kFloat32, torch::kCPU,
                                                  testing::streamed_plan(k.group, k.head_rows), scores_, got, *data_, o);
    ASSERT_EQ(got.candidates.size(), want.candidates.size());
    for (size_t i = 0; i < want.candidates.size(); ++i) {
      EXPECT_EQ(got.candidates[i].rank, want.candidates[i].rank);
      EXPECT_EQ(got.candidates[i].why, want.candidates[i].why);
      ASSERT_EQ(got.candidates[i].measured.size(), want.candidates[i].measured.size());
      for (const auto& [key, value] : want.candidates[i].measured)
        EXPECT_EQ(got.candidates[i].measured.at(key), value) << "candidate " << i << " " << key;
    }
    // Two blocks or two head pieces (the whole head in the last case) and
    // the embedding rows: under half the model's weights here.
    EXPECT_LT(held, weights_ / 2);
    EXPECT_GT(held, 0u);
  }
}

TEST_F(StreamedRanking, AResidentPlanLoadsTheParentAndRanksTheSame) {
  SearchResult want = result_;
  auto parent = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  rank_candidates_on_data(parent, scores_, want, *data_, options());
  SearchResult got = result_;
  const uint64_t held =
      rank_candidates_on_data(dir_ / "model", torch::kFloat32, torch::kCPU, ResidencyPlan{}, scores_, got, *data_,
                              options());
  EXPECT_EQ(held, weights_);
  for (size_t i = 0; i < want.candidates.size(); ++i) EXPECT_EQ(got.candidates[i].measured, want.candidates[i].measured);
}

TEST(RankResidency, PlansTheParentsHiddenStatesAndTheHeadPass) {
  const ModelConfig c = testing::tiny_config("M*-M-");
  RankOptions o;
  o.tokens = 4096;
  o.seq_len = 64;
  o.batch = 2;
  const ResidencyOptions needs = rank_residency_needs(c, o, torch::kFloat32);
  const uint64_t hidden = 4096 * static_cast<uint64_t>(c.hidden_size) * 4;
  EXPECT_EQ(needs.extra_working_bytes, hidden + comparison_working_bytes(c, torch::kFloat32, 128));
  // Twice the ranking tokens: twice the parent's states.
  o.tokens = 8192;
  EXPECT_EQ(rank_residency_needs(c, o, torch::kFloat32).extra_working_bytes - needs.extra_working_bytes, hidden);
}

}  // namespace
}  // namespace minipuzzle
