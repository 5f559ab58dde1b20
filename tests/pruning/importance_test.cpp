// Importance scoring: known answers on tiny random models.
#include <gtest/gtest.h>

#include "minipuzzle/atomic_file.h"
#include <torch/torch.h>

#include <filesystem>
#include <numeric>

#include "../model/streamed_test_plan.h"
#include "../model/tiny_config.h"
#include "minipuzzle/importance_report.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/layer_importance.h"
#include "minipuzzle/score_importance.h"
#include "minipuzzle/streamed_model.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/width_statistics.h"

namespace minipuzzle {
namespace {

namespace fs = std::filesystem;
using testing::tiny_config;
using testing::tiny_moe_config;

torch::Tensor param(HybridLM& m, const std::string& name) {
  // Keep the dict alive: find() points into it (ASan: heap-use-after-free
  // when it was a temporary).
  const auto params = m->named_parameters();
  auto* p = params.find(name);
  if (!p) throw std::logic_error("no parameter " + name);
  return *p;
}

HybridLM tiny_model(const std::string& pattern = "M*-M-", uint64_t seed = 7) {
  HybridLM m(tiny_config(pattern));
  m->init_random(seed);
  return m;
}

// A dataset of random tokens, removed with the fixture.
class ImportanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mp_importance_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    prefix_ = (dir_ / "calib").string();
    IndexedDatasetBuilder b(prefix_, TokenDType::U16);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    for (int d = 0; d < 8; ++d) {
      auto t = torch::randint(0, 97, {100}, gen, torch::kInt64);
      b.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    }
    b.finish();
    data_ = IndexedDataset::open(prefix_);
  }
  void TearDown() override { minipuzzle::remove_tree(dir_); }

  ScoreOptions options() const {
    ScoreOptions o;
    o.samples = 6;
    o.seq_len = 16;
    o.batch = 2;
    o.seed = 11;
    return o;
  }

  fs::path dir_;
  std::string prefix_;
  std::shared_ptr<IndexedDataset> data_;
};

int64_t argmin(const std::vector<float>& v) {
  return std::min_element(v.begin(), v.end()) - v.begin();
}

TEST(Aggregation, SequenceMatchesHandComputedValues) {
  // One sample, L = 3, two channels: (1, -2), (-3, 0), (2, 2).
  auto v = torch::tensor({1.0, -2.0, -3.0, 0.0, 2.0, 2.0}, torch::kFloat64).reshape({1, 3, 2});
  auto mean = aggregate_sequence(v, SeqAggregation::Mean);
  auto l2 = aggregate_sequence(v, SeqAggregation::L2);
  auto mx = aggregate_sequence(v, SeqAggregation::Max);
  EXPECT_DOUBLE_EQ(mean[0][0].item<double>(), 2.0);  // (1+3+2)/3
  EXPECT_DOUBLE_EQ(mean[0][1].item<double>(), 4.0 / 3.0);
  EXPECT_DOUBLE_EQ(l2[0][0].item<double>(), std::sqrt(14.0));
  EXPECT_DOUBLE_EQ(l2[0][1].item<double>(), std::sqrt(8.0));
  EXPECT_DOUBLE_EQ(mx[0][0].item<double>(), 3.0);
  EXPECT_DOUBLE_EQ(mx[0][1].item<double>(), 2.0);
}

TEST(Aggregation, BatchMatchesHandComputedValuesAcrossBatches) {
  // Samples 1, 2 (first batch) and 4 (second batch), one channel.
  BatchAccumulator acc;
  acc.add(torch::tensor({{1.0}, {2.0}}, torch::kFloat64));
  acc.add(torch::tensor({{4.0}}, torch::kFloat64));
  EXPECT_EQ(acc.samples(), 3);
  EXPECT_NEAR(acc.result(BatchAggregation::Mean)[0].item<double>(), 7.0 / 3.0, 1e-12);
  EXPECT_NEAR(acc.result(BatchAggregation::L2)[0].item<double>(), std::sqrt(21.0), 1e-12);
  // var = mean of squares - square of mean = 7 - 49/9 = 14/9.
  EXPECT_NEAR(acc.result(BatchAggregation::Var)[0].item<double>(), 14.0 / 9.0, 1e-12);
}

TEST(Aggregation, ParsesOptionsAndRejectsUnknownOnes) {
  EXPECT_EQ(Aggregation::parse("seq=mean,batch=l2").to_string(), "seq=mean,batch=l2");
  EXPECT_EQ(Aggregation::parse("batch=var").to_string(), "seq=mean,batch=var");
  EXPECT_EQ(Aggregation::parse("seq=max").to_string(), "seq=max,batch=l2");
  EXPECT_THROW(Aggregation::parse("seq=median"), InputError);
  EXPECT_THROW(Aggregation::parse("batch"), InputError);
  EXPECT_THROW(LayerMetrics::parse("mse,ppl"), InputError);
  EXPECT_THROW(LayerMetrics::parse(""), InputError);
  EXPECT_EQ(LayerMetrics::parse("kl,bi").names(), (std::vector<std::string>{"kl", "bi"}));
}

TEST_F(ImportanceTest, ZeroedFfnNeuronScoresExactlyZeroAndLast) {
  auto m = tiny_model();
  torch::NoGradGuard ng;
  param(m, "backbone.layers.2.mixer.up_proj.weight")[17].zero_();
  auto s = score_importance(m, *data_, options());
  ASSERT_EQ(s.ffn[2].size(), 48u);
  EXPECT_EQ(s.ffn[2][17], 0.0f);
  EXPECT_EQ(argmin(s.ffn[2]), 17);
  for (std::size_t j = 0; j < s.ffn[2].size(); ++j)
    if (j != 17) {
      EXPECT_GT(s.ffn[2][j], 0.0f);
    }
}

TEST_F(ImportanceTest, AttentionHeadWithZeroedOProjColumnsScoresZero) {
  auto m = tiny_model();
  torch::NoGradGuard ng;
  const int64_t head = 2, hd = 12;
  param(m, "backbone.layers.1.mixer.o_proj.weight").narrow(1, head * hd, hd).zero_();
  auto s = score_importance(m, *data_, options());
  ASSERT_EQ(s.attention_heads[1].size(), 4u);
  EXPECT_EQ(s.attention_heads[1][head], 0.0f);
  for (int64_t h = 0; h < 4; ++h)
    if (h != head) {
      EXPECT_GT(s.attention_heads[1][h], 0.0f);
    }
}

TEST_F(ImportanceTest, LayerWithZeroedOutputHasZeroDropMseAndRanksLast) {
  // One zeroed layer of each type in turn.
  const std::pair<int64_t, const char*> cases[] = {
      {0, "backbone.layers.0.mixer.out_proj.weight"},
      {1, "backbone.layers.1.mixer.o_proj.weight"},
      {2, "backbone.layers.2.mixer.down_proj.weight"}};
  for (const auto& [layer, name] : cases) {
    auto m = tiny_model();
    {
      torch::NoGradGuard ng;
      param(m, name).zero_();
    }
    auto s = score_importance(m, *data_, options());
    const auto& mse = s.layer.at("mse");
    EXPECT_EQ(mse[layer], 0.0f) << name;
    EXPECT_EQ(argmin(mse), layer) << name;
    EXPECT_NEAR(s.layer.at("kl")[layer], 0.0f, 1e-7) << name;
    EXPECT_NEAR(s.layer.at("loss")[layer], 0.0f, 1e-6) << name;
    EXPECT_NEAR(s.layer.at("bi")[layer], 0.0f, 1e-6) << name;
    for (std::size_t i = 0; i < mse.size(); ++i)
      if (static_cast<int64_t>(i) != layer) {
        EXPECT_GT(mse[i], 0.0f) << name << " layer " << i;
      }
  }
}

TEST_F(ImportanceTest, PermutingFfnNeuronsPermutesTheirScores) {
  auto a = tiny_model();
  auto b = tiny_model();
  auto perm = torch::randperm(48, at::make_generator<at::CPUGeneratorImpl>(5), torch::kInt64);
  {
    torch::NoGradGuard ng;
    auto up = param(b, "backbone.layers.4.mixer.up_proj.weight");
    auto down = param(b, "backbone.layers.4.mixer.down_proj.weight");
    up.copy_(up.index_select(0, perm));
    down.copy_(down.index_select(1, perm));
  }
  auto sa = score_importance(a, *data_, options());
  auto sb = score_importance(b, *data_, options());
  for (int64_t j = 0; j < 48; ++j)
    EXPECT_NEAR(sb.ffn[4][j], sa.ffn[4][perm[j].item<int64_t>()], 1e-5 * (1 + sa.ffn[4][perm[j].item<int64_t>()]));
  // The function is unchanged, so layer scores agree too.
  for (std::size_t i = 0; i < sa.layer.at("mse").size(); ++i)
    EXPECT_NEAR(sa.layer.at("mse")[i], sb.layer.at("mse")[i], 1e-6);
}

TEST_F(ImportanceTest, CachedDropOneEqualsNaiveRecomputation) {
  auto m = tiny_model("M*-M-*M");
  auto o = options();
  auto s = score_importance(m, *data_, o);
  // Naive: for each layer, a full forward that skips it, on the same windows.
  torch::NoGradGuard ng;
  const auto starts = calibration_windows(*data_, o);
  const int64_t n = m->config().num_layers();
  std::vector<double> mse(n, 0.0), kl(n, 0.0), loss(n, 0.0);
  double elements = 0, tokens = 0;
  for (std::size_t i = 0; i < starts.size(); i += o.batch) {
    std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + o.batch));
    std::vector<torch::Tensor> rows;
    for (uint64_t st : part) {
      std::vector<int64_t> ids(o.seq_len + 1);
      data_->read_flat(st, o.seq_len + 1, ids.data());
      rows.push_back(torch::tensor(ids, torch::kInt64));
    }
    auto batch = torch::stack(rows);
    auto in = batch.narrow(1, 0, o.seq_len), tg = batch.narrow(1, 1, o.seq_len).reshape({-1});
    auto full = m->forward_hidden(in);
    auto lp = torch::log_softmax(m->lm_head(full), -1).reshape({-1, 97});
    for (int64_t l = 0; l < n; ++l) {
      std::vector<bool> skip(n, false);
      skip[l] = true;
      auto dropped = m->final_norm(m->run_layers(m->embed(in), 0, n, skip));
      auto lq = torch::log_softmax(m->lm_head(dropped), -1).reshape({-1, 97});
      mse[l] += (dropped - full).square().sum().item<double>();
      kl[l] += (lp.exp() * (lp - lq)).sum().item<double>();
      loss[l] += (lp.gather(1, tg.unsqueeze(1)) - lq.gather(1, tg.unsqueeze(1))).sum().item<double>();
    }
    elements += full.numel();
    tokens += in.numel();
  }
  for (int64_t l = 0; l < n; ++l) {
    EXPECT_NEAR(s.layer.at("mse")[l], mse[l] / elements, 1e-6 * (1 + mse[l] / elements)) << l;
    EXPECT_NEAR(s.layer.at("kl")[l], kl[l] / tokens, 1e-6 * (1 + kl[l] / tokens)) << l;
    EXPECT_NEAR(s.layer.at("loss")[l], loss[l] / tokens, 1e-5) << l;
  }
}

TEST_F(ImportanceTest, DeterministicForAFixedSeedAndSeedMatters) {
  auto m = tiny_model();
  auto a = score_importance(m, *data_, options());
  auto b = score_importance(m, *data_, options());
  EXPECT_EQ(a.layer, b.layer);
  EXPECT_EQ(a.ffn, b.ffn);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.mamba_channels, b.mamba_channels);
  auto o = options();
  o.seed = 12;
  auto c = score_importance(m, *data_, o);
  EXPECT_NE(a.ffn, c.ffn);
}

TEST_F(ImportanceTest, MambaHeadScoresComeFromTheirChannels) {
  auto m = tiny_model();
  auto s = score_importance(m, *data_, options());
  const auto& ch = s.mamba_channels[0];
  ASSERT_EQ(ch.size(), 32u);  // 4 heads x 8
  ASSERT_EQ(s.mamba_heads[0].size(), 4u);
  ASSERT_EQ(s.mamba_head_channels[0].size(), 8u);
  for (int h = 0; h < 4; ++h) {
    double sq = 0;
    for (int p = 0; p < 8; ++p) sq += ch[h * 8 + p] * ch[h * 8 + p];
    EXPECT_NEAR(s.mamba_heads[0][h], std::sqrt(sq), 1e-5 * std::sqrt(sq));
  }
  // Zeroing the x rows of head 3 in in_proj (rows d_inner + 24..31) zeroes its score.
  torch::NoGradGuard ng;
  param(m, "backbone.layers.3.mixer.in_proj.weight").narrow(0, 32 + 24, 8).zero_();
  auto z = score_importance(m, *data_, options());
  EXPECT_EQ(z.mamba_heads[3][3], 0.0f);
  EXPECT_EQ(argmin(z.mamba_heads[3]), 3);
}

TEST_F(ImportanceTest, HiddenChannelsSumEveryNormOutput) {
  auto m = tiny_model();
  auto s = score_importance(m, *data_, options());
  ASSERT_EQ(s.hidden.size(), 32u);
  // A norm weight of zero in channel 5 everywhere makes that channel silent.
  torch::NoGradGuard ng;
  for (auto& p : m->named_parameters())
    if (p.key().find("norm") != std::string::npos && p.key().find("mixer.norm") == std::string::npos)
      p.value()[5].zero_();
  auto z = score_importance(m, *data_, options());
  EXPECT_EQ(z.hidden[5], 0.0f);
  EXPECT_EQ(argmin(z.hidden), 5);
}

TEST_F(ImportanceTest, DatasetShorterThanSamplesTimesSeqLenIsAnInputError) {
  auto m = tiny_model();
  auto o = options();
  o.samples = 100;
  o.seq_len = 16;  // 1600 > 800 tokens
  EXPECT_THROW(score_importance(m, *data_, o), InputError);
}

TEST_F(ImportanceTest, TokenIdsOutsideTheVocabularyAreAnInputError) {
  const std::string prefix = (dir_ / "big_ids").string();
  {
    IndexedDatasetBuilder b(prefix, TokenDType::U16);
    b.add_document(std::vector<int64_t>(200, 500));
    b.finish();
  }
  auto data = IndexedDataset::open(prefix);
  auto m = tiny_model();
  EXPECT_THROW(score_importance(m, *data, options()), InputError);
}

TEST_F(ImportanceTest, SavedScoresReadBackEqualAndRejectAnotherModel) {
  auto m = tiny_model();
  auto s = score_importance(m, *data_, options());
  s.config_hash = config_fingerprint(m->config());
  s.weights_hash = "0123456789abcdef";
  save_importance(s, m->config(), dir_ / "scores");
  auto r = load_importance(dir_ / "scores");
  EXPECT_EQ(r.layer, s.layer);
  EXPECT_EQ(r.ffn, s.ffn);
  EXPECT_EQ(r.attention_heads, s.attention_heads);
  EXPECT_EQ(r.mamba_channels, s.mamba_channels);
  EXPECT_EQ(r.mamba_heads, s.mamba_heads);
  EXPECT_EQ(r.mamba_head_channels, s.mamba_head_channels);
  EXPECT_EQ(r.hidden, s.hidden);
  EXPECT_EQ(r.weights_hash, s.weights_hash);
  EXPECT_EQ(r.primary_layer_metric(), "mse");
  // Another architecture: the hash and the lengths disagree.
  EXPECT_THROW(r.validate(tiny_config("M*-M-M"), "scores"), InputError);
  EXPECT_THROW(load_importance(dir_ / "nowhere"), InputError);
}

// Found by fuzzing (tests/fuzz): keys of the wrong type in importance.json
// escaped as nlohmann type_error (exit 1) instead of InputError, and deep
// nesting overflowed the stack.
TEST_F(ImportanceTest, MalformedImportanceJsonIsAnInputError) {
  auto m = tiny_model();
  auto s = score_importance(m, *data_, options());
  s.config_hash = config_fingerprint(m->config());
  save_importance(s, m->config(), dir_ / "scores");
  const std::string original = read_file(dir_ / "scores" / "importance.json");
  auto with = [&](const char* key, const nlohmann::json& value) {
    auto j = nlohmann::json::parse(original);
    j[key] = value;
    write_file_atomic(dir_ / "scores" / "importance.json", j.dump());
  };
  for (const auto& [key, value] : std::vector<std::pair<const char*, nlohmann::json>>{
           {"format", 5}, {"version", "1"}, {"version", nullptr}, {"config_hash", 12}, {"weights_hash", false}}) {
    with(key, value);
    EXPECT_THROW(load_importance(dir_ / "scores"), InputError) << key << " = " << value.dump();
  }
  write_file_atomic(dir_ / "scores" / "importance.json",
                    "{\"format\": \"minipuzzle-importance\", \"x\": " + std::string(100000, '[') +
                        std::string(100000, ']') + "}");
  EXPECT_THROW(load_importance(dir_ / "scores"), InputError);
  write_file_atomic(dir_ / "scores" / "importance.json", original);
  EXPECT_NO_THROW(load_importance(dir_ / "scores"));
}

TEST_F(ImportanceTest, SearchImportanceAveragesTheLayersKeptFractions) {
  auto m = tiny_model("M*-M-");
  auto s = score_importance(m, *data_, options());
  auto si = s.to_search_importance(m->config());
  EXPECT_EQ(si.layer.size(), 5u);
  // Keeping the top k of every MLP layer keeps, on average, what kept_fraction says.
  for (int64_t k : {1, 7, 24, 48}) {
    double mean = 0;
    for (int64_t l : {2, 4}) {
      std::vector<double> v(s.ffn[l].begin(), s.ffn[l].end());
      mean += kept_fraction(v, 48, k) / 2;
    }
    EXPECT_NEAR(kept_fraction(si.ffn, 48, k), mean, 1e-9) << k;
  }
}

// Streamed scoring (streamed_model.h): the same scores, bit for bit, from a
// model whose blocks exist only while they run, with the LM head read in
// slices, in groups of batches, and with head passes of any size.
class StreamedScore : public ImportanceTest {
 protected:
  static constexpr int64_t kVocab = 2 * kLmHeadSliceRows + 700;  // the head streams in pieces

  virtual ModelConfig config() const { return tiny_config("M*-M-"); }

  void SetUp() override {
    ImportanceTest::SetUp();
    nlohmann::json j = config().to_json();
    j["vocab_size"] = kVocab;
    HybridLM m(ModelConfig::from_json(j, "tiny"));
    m->init_random(5);
    save_model(m, dir_ / "model", torch::kFloat32);
    IndexedDatasetBuilder b((dir_ / "wide").string(), TokenDType::I32);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    for (int d = 0; d < 4; ++d) {
      auto t = torch::randint(0, kVocab, {80}, gen, torch::kInt64);
      b.add_document(std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
    }
    b.finish();
    wide_ = IndexedDataset::open((dir_ / "wide").string());
  }

  ResidencyPlan streamed(int64_t group, int64_t head_rows) const { return testing::streamed_plan(group, head_rows); }

  ScoreOptions wide_options() const {
    ScoreOptions o = options();
    o.samples = 5;  // groups of 2 leave a short last group, batches of 2 a short last batch
    return o;
  }

  std::shared_ptr<IndexedDataset> wide_;
};

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << what << "[" << i << "]";
}

void expect_same_scores(const ImportanceScores& a, const ImportanceScores& b) {
  ASSERT_EQ(a.layer.size(), b.layer.size());
  for (const auto& [metric, values] : a.layer) expect_same_bits(values, b.layer.at(metric), metric);
  expect_same_bits(a.hidden, b.hidden, "hidden");
  const std::vector<std::pair<std::string, const std::vector<std::vector<float>>*>> axes_a{
      {"ffn", &a.ffn}, {"heads", &a.attention_heads}, {"channels", &a.mamba_channels},
      {"mamba_heads", &a.mamba_heads}, {"head_channels", &a.mamba_head_channels},
      {"moe_experts", &a.moe_experts}, {"moe_expert_frequency", &a.moe_expert_frequency},
      {"moe_expert_weight", &a.moe_expert_weight}, {"moe_expert_neurons", &a.moe_expert_neurons},
      {"moe_shared_neurons", &a.moe_shared_neurons}};
  const std::vector<const std::vector<std::vector<float>>*> axes_b{
      &b.ffn, &b.attention_heads, &b.mamba_channels, &b.mamba_heads, &b.mamba_head_channels,
      &b.moe_experts, &b.moe_expert_frequency, &b.moe_expert_weight, &b.moe_expert_neurons,
      &b.moe_shared_neurons};
  for (size_t k = 0; k < axes_a.size(); ++k) {
    ASSERT_EQ(axes_a[k].second->size(), axes_b[k]->size()) << axes_a[k].first;
    for (size_t l = 0; l < axes_b[k]->size(); ++l)
      expect_same_bits((*axes_a[k].second)[l], (*axes_b[k])[l], axes_a[k].first + " layer " + std::to_string(l));
  }
}

TEST_F(StreamedScore, ScoresAreBitIdenticalToTheResidentModel) {
  auto resident = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  const ImportanceScores want = score_importance(resident, *wide_, wide_options());
  ASSERT_GT(want.layer.at("kl")[0], 0.0f);
  uint64_t weights = 0;
  for (const auto& p : resident->parameters()) weights += static_cast<uint64_t>(p.numel() * p.element_size());
  for (auto [group, head_rows] : {std::pair<int64_t, int64_t>{1, kLmHeadSliceRows}, {2, kLmHeadSliceRows},
                                  {2, 2 * kLmHeadSliceRows}, {3, kVocab}}) {
    ForwardModel m(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(group, head_rows));
    const ImportanceScores got = score_importance(m, *wide_, wide_options());
    SCOPED_TRACE("group " + std::to_string(group) + ", head rows " + std::to_string(head_rows));
    expect_same_scores(want, got);
    // Two blocks (or the head's pieces) at most, plus the group's embedding rows.
    EXPECT_LT(m.peak_bytes_held(), weights / 2);
  }
}

// The same on a model with MoE (E) layers: the router statistics, expert
// and neuron scores have the resident run's bits too.
class StreamedMoeScore : public StreamedScore {
 protected:
  ModelConfig config() const override { return tiny_moe_config("M*EM-E"); }
};

TEST_F(StreamedMoeScore, ScoresAreBitIdenticalToTheResidentModel) {
  auto resident = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  const ImportanceScores want = score_importance(resident, *wide_, wide_options());
  for (size_t i : {size_t{2}, size_t{5}}) {
    ASSERT_EQ(want.moe_experts[i].size(), 6u);
    float load = 0;
    for (float f : want.moe_expert_frequency[i]) load += f;
    EXPECT_NEAR(load, 2.0f, 1e-5);  // two experts per token
    EXPECT_GT(want.layer.at("kl")[i], 0.0f);  // E layers run in the drop-one metrics
  }
  // The MoE vectors survive the files, and the report draws the router load.
  ImportanceScores saved = want;
  saved.config_hash = config_fingerprint(resident->config());
  save_importance(saved, resident->config(), dir_ / "scores");
  expect_same_scores(want, load_importance(dir_ / "scores"));
  write_importance_report(saved, resident->config(), dir_ / "scores");
  // The MoE sizes are part of the model's identity.
  ModelConfig fewer = resident->config();
  fewer.n_routed_experts = 3;
  EXPECT_NE(config_fingerprint(fewer), saved.config_hash);
  EXPECT_TRUE(fs::exists(dir_ / "scores" / "moe_router_load.png"));
  for (auto [group, head_rows] : {std::pair<int64_t, int64_t>{1, kLmHeadSliceRows}, {2, kLmHeadSliceRows},
                                  {3, kVocab}}) {
    ForwardModel m(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(group, head_rows));
    const ImportanceScores got = score_importance(m, *wide_, wide_options());
    SCOPED_TRACE("group " + std::to_string(group) + ", head rows " + std::to_string(head_rows));
    expect_same_scores(want, got);
  }
}

TEST_F(StreamedScore, HeadPassesOfAnySizeGiveTheSameLayerScores) {
  auto resident = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  const ModelConfig& cfg = resident->config();
  const auto starts = calibration_windows(*wide_, wide_options());
  std::vector<torch::Tensor> inputs, targets;
  for (size_t i = 0; i < starts.size(); i += 2) {
    std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + 2));
    auto rows = gather_windows(*wide_, part, 16, kVocab);
    inputs.push_back(rows.narrow(1, 0, 16));
    targets.push_back(rows.narrow(1, 1, 16));
  }
  LayerImportance want(cfg, LayerMetrics{});
  for (size_t k = 0; k < inputs.size(); ++k) want.add_batch(resident, inputs[k], targets[k]);
  // One unit per pass (1 byte), a few units per pass, every unit of a batch in one pass.
  for (uint64_t budget : {uint64_t{1}, uint64_t{3} * 32 * kVocab * 4, uint64_t{1} << 30}) {
    ForwardModel m(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(2, kLmHeadSliceRows));
    ASSERT_TRUE(m.head_read_per_pass());
    LayerImportance got(cfg, LayerMetrics{}, budget);
    for (size_t k = 0; k < inputs.size(); k += 2) {
      const size_t n = std::min<size_t>(2, inputs.size() - k);
      got.add_group(m, {inputs.begin() + k, inputs.begin() + k + n}, {targets.begin() + k, targets.begin() + k + n});
    }
    for (const auto& [metric, values] : want.result())
      expect_same_bits(values, got.result().at(metric), metric + " at budget " + std::to_string(budget));
    EXPECT_EQ(want.full_model_loss(), got.full_model_loss());
  }
}

// Past keep_full_logprobs_bytes (1 GiB: a batch of ~2K tokens at vocabulary
// 131072) the full model's log-probabilities are recomputed per chunk beside
// each dropped layer's instead of kept for the batch: the same scores, bit
// for bit, resident and streamed, at any head-pass size.
TEST_F(StreamedScore, LogProbabilitiesRecomputedPerChunkGiveTheSameLayerScores) {
  auto resident = load_model(dir_ / "model", torch::kFloat32, torch::kCPU);
  const ModelConfig& cfg = resident->config();
  const auto starts = calibration_windows(*wide_, wide_options());
  std::vector<torch::Tensor> inputs, targets;
  for (size_t i = 0; i < starts.size(); i += 2) {
    std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + 2));
    auto rows = gather_windows(*wide_, part, 16, kVocab);
    inputs.push_back(rows.narrow(1, 0, 16));
    targets.push_back(rows.narrow(1, 1, 16));
  }
  LayerImportance want(cfg, LayerMetrics{});
  for (size_t k = 0; k < inputs.size(); ++k) want.add_batch(resident, inputs[k], targets[k]);
  ASSERT_GT(want.result().at("kl")[0], 0.0f);
  // A batch's full log-probabilities are 32 x kVocab x 4 bytes: a threshold
  // of 0 or one byte below them takes the per-chunk branch.
  const uint64_t batch_logprobs = uint64_t{32} * kVocab * 4;
  for (uint64_t keep : {uint64_t{0}, batch_logprobs - 1}) {
    LayerImportance got(cfg, LayerMetrics{}, uint64_t{1} << 30, keep);
    for (size_t k = 0; k < inputs.size(); ++k) got.add_batch(resident, inputs[k], targets[k]);
    for (const auto& [metric, values] : want.result())
      expect_same_bits(values, got.result().at(metric), metric + " resident, keep " + std::to_string(keep));
    EXPECT_EQ(want.full_model_loss(), got.full_model_loss());
    for (uint64_t budget : {uint64_t{1}, uint64_t{3} * 32 * kVocab * 4, uint64_t{1} << 30}) {
      ForwardModel m(dir_ / "model", torch::kFloat32, torch::kCPU, streamed(2, kLmHeadSliceRows));
      LayerImportance s(cfg, LayerMetrics{}, budget, keep);
      for (size_t k = 0; k < inputs.size(); k += 2) {
        const size_t n = std::min<size_t>(2, inputs.size() - k);
        s.add_group(m, {inputs.begin() + k, inputs.begin() + k + n}, {targets.begin() + k, targets.begin() + k + n});
      }
      for (const auto& [metric, values] : want.result())
        expect_same_bits(values, s.result().at(metric),
                         metric + " streamed, keep " + std::to_string(keep) + ", budget " + std::to_string(budget));
      EXPECT_EQ(want.full_model_loss(), s.full_model_loss());
    }
  }
}

TEST(ScoreResidency, PlansTheDropOneStatesAndRefusesACapBelowThem) {
  const ModelConfig c = tiny_config("M*-M-");
  ScoreOptions o;
  o.batch = 2;
  o.seq_len = 64;
  const ResidencyOptions needs = score_residency_needs(c, o, torch::kFloat32);
  EXPECT_EQ(needs.states_per_batch, c.num_layers() + 1);
  EXPECT_GT(needs.extra_working_bytes, 0u);
  o.layer_metrics = LayerMetrics::parse("bi");
  EXPECT_EQ(score_residency_needs(c, o, torch::kFloat32).states_per_batch, 1);
  EXPECT_EQ(score_residency_needs(c, o, torch::kFloat32).extra_working_bytes, 0u);

  ResidencyOptions r = needs;
  r.batch = 2;
  r.seq_len = 64;
  r.batches = 4;
  const uint64_t weights = plan_residency(c, torch::kFloat32, {}, torch::kCPU).weight_bytes;
  r.max_device_memory = weights / 4;
  try {
    plan_residency(c, torch::kFloat32, r, torch::kCPU);
    FAIL() << "a quarter of a tiny model's weights cannot hold six hidden states and the logits";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--max-device-memory"), std::string::npos);
  }
  // States count: a cap that streams a forward with several batches per
  // group holds fewer batches of score's n+1 states.
  ResidencyOptions f = r;
  f.states_per_batch = 1;
  f.extra_working_bytes = 0;
  f.batches = 1000;
  f.batch = 1;
  f.seq_len = 8;  // short windows: room for many batches of hidden states beside the working memory
  f.max_device_memory.reset();
  const ResidencyPlan all = plan_residency(c, torch::kFloat32, f, torch::kCPU);
  f.max_device_memory = all.weight_bytes + all.working_bytes - 1;  // just short of resident
  const ResidencyPlan forward = plan_residency(c, torch::kFloat32, f, torch::kCPU);
  ASSERT_TRUE(forward.streamed);
  f.states_per_batch = c.num_layers() + 1;
  const ResidencyPlan scoring = plan_residency(c, torch::kFloat32, f, torch::kCPU);
  EXPECT_EQ(scoring.activation_bytes_per_batch, forward.activation_bytes_per_batch * (c.num_layers() + 1));
  EXPECT_GT(forward.group_batches, 1);
  EXPECT_LT(scoring.group_batches, forward.group_batches);
}

}  // namespace
}  // namespace minipuzzle
