// HybridLM structure and behaviour that the oracle tests do not pin down.
#include <gtest/gtest.h>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/errors.h"
#include "tiny_config.h"

using namespace minipuzzle;
using minipuzzle::testing::tiny_config;

namespace {

struct Recorder : Observer {
  std::map<std::string, int> calls;
  std::map<std::string, std::vector<int64_t>> shapes;
  void observe(ObservePoint p, int64_t layer, const torch::Tensor& v) override {
    std::string key = std::string(observe_point_name(p)) + "@" + std::to_string(layer);
    calls[key]++;
    shapes[key] = v.sizes().vec();
  }
};

}  // namespace

TEST(HybridLM, ParametersCarryHubNames) {
  HybridLM m(tiny_config("M*-"));
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) names.insert(p.key());
  for (const char* n : {"backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight",
                        "backbone.layers.0.norm.weight", "backbone.layers.0.mixer.in_proj.weight",
                        "backbone.layers.0.mixer.conv1d.weight", "backbone.layers.0.mixer.conv1d.bias",
                        "backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D",
                        "backbone.layers.0.mixer.dt_bias", "backbone.layers.0.mixer.norm.weight",
                        "backbone.layers.0.mixer.out_proj.weight", "backbone.layers.1.mixer.q_proj.weight",
                        "backbone.layers.1.mixer.k_proj.weight", "backbone.layers.1.mixer.v_proj.weight",
                        "backbone.layers.1.mixer.o_proj.weight", "backbone.layers.2.mixer.up_proj.weight",
                        "backbone.layers.2.mixer.down_proj.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(names.size(), 20u);  // + the norms of layers 1 and 2
}

TEST(HybridLM, ShapesFollowTheConfig) {
  auto c = tiny_config("M*-");
  HybridLM m(c);
  auto params = m->named_parameters();
  EXPECT_EQ(params["backbone.layers.0.mixer.in_proj.weight"].sizes(),
            torch::IntArrayRef({c.mamba_in_proj_dim(), c.hidden_size}));
  EXPECT_EQ(params["backbone.layers.0.mixer.conv1d.weight"].sizes(),
            torch::IntArrayRef({c.mamba_conv_dim(), 1, c.conv_kernel}));
  // head_dim is its own key: q is heads*head_dim wide, not hidden.
  EXPECT_EQ(params["backbone.layers.1.mixer.q_proj.weight"].sizes(), torch::IntArrayRef({4 * 12, 32}));
  EXPECT_EQ(params["backbone.layers.1.mixer.k_proj.weight"].sizes(), torch::IntArrayRef({2 * 12, 32}));
}

TEST(HybridLM, ForwardGivesFp32LogitsAndIsCausal) {
  HybridLM m(tiny_config());
  m->init_random(1);
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 97, {2, 13}, torch::kInt64);
  auto logits = m->forward(tokens);
  EXPECT_EQ(logits.sizes(), torch::IntArrayRef({2, 13, 97}));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  auto t2 = tokens.clone();
  t2.narrow(1, 9, 4).fill_(5);
  auto logits2 = m->forward(t2);
  EXPECT_LT((logits.narrow(1, 0, 9) - logits2.narrow(1, 0, 9)).abs().max().item<double>(), 1e-5);
  EXPECT_GT((logits.narrow(1, 9, 4) - logits2.narrow(1, 9, 4)).abs().max().item<double>(), 1e-4);
}

TEST(HybridLM, InitRandomIsDeterministicPerSeed) {
  HybridLM a(tiny_config()), b(tiny_config()), c(tiny_config());
  a->init_random(5);
  b->init_random(5);
  c->init_random(6);
  auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  EXPECT_FALSE(torch::equal(pa["lm_head.weight"], pc["lm_head.weight"]));
}

TEST(HybridLM, ObserversSeeEveryNamedPointWithItsShape) {
  auto cfg = tiny_config("M*-");
  HybridLM m(cfg);
  m->init_random(2);
  Recorder rec;
  m->observers().add(&rec);
  torch::NoGradGuard ng;
  m->forward(torch::randint(0, 97, {2, 5}, torch::kInt64));
  EXPECT_EQ(rec.shapes["block_input@0"], (std::vector<int64_t>{2, 5, 32}));
  EXPECT_EQ(rec.shapes["mixer_input@1"], (std::vector<int64_t>{2, 5, 32}));
  EXPECT_EQ(rec.shapes["mixer_output@2"], (std::vector<int64_t>{2, 5, 32}));
  EXPECT_EQ(rec.shapes["mamba_x@0"], (std::vector<int64_t>{2, 5, cfg.mamba_d_inner()}));
  EXPECT_EQ(rec.shapes["attention_heads@1"], (std::vector<int64_t>{2, 5, 4, 12}));
  EXPECT_EQ(rec.shapes["mlp_activation@2"], (std::vector<int64_t>{2, 5, 48}));
  EXPECT_EQ(rec.shapes["final_norm@3"], (std::vector<int64_t>{2, 5, 32}));
  m->observers().remove(&rec);
  rec.calls.clear();
  m->forward(torch::randint(0, 97, {1, 3}, torch::kInt64));
  EXPECT_TRUE(rec.calls.empty());
}

TEST(HybridLM, SkippingALayerEqualsRunningAroundIt) {
  HybridLM m(tiny_config("M*-M-"));
  m->init_random(3);
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 97, {1, 11}, torch::kInt64);
  auto h0 = m->embed(tokens);
  std::vector<bool> skip(5, false);
  skip[2] = true;
  auto skipped = m->run_layers(h0, 0, 5, skip);
  auto manual = m->run_layers(m->run_layers(h0, 0, 2), 3, 5);
  EXPECT_TRUE(torch::allclose(skipped, manual));
  EXPECT_TRUE(torch::allclose(m->lm_head(m->final_norm(m->run_layers(h0, 0, 5))), m->forward(tokens)));
}

TEST(HybridLM, Bf16ForwardStaysCloseToFp32) {
  HybridLM m(tiny_config());
  m->init_random(4);
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 97, {1, 17}, torch::kInt64);
  auto ref = m->forward(tokens);
  m->to(torch::kBFloat16);
  auto low = m->forward(tokens);
  EXPECT_EQ(low.scalar_type(), torch::kFloat32);
  double rel = ((low - ref).norm() / ref.norm()).item<double>();
  EXPECT_LT(rel, 3e-2);
}

TEST(ModelOptions, ParsesDtypesAndRejectsUnknownOnes) {
  EXPECT_EQ(parse_model_dtype("bf16"), torch::kBFloat16);
  EXPECT_EQ(parse_model_dtype("fp32"), torch::kFloat32);
  EXPECT_THROW(parse_model_dtype("int4"), InputError);
  EXPECT_EQ(parse_device("cpu"), torch::Device(torch::kCPU));
  EXPECT_THROW(parse_device("tpu"), InputError);
  if (!torch::cuda::is_available()) {
    EXPECT_THROW(parse_device("cuda"), InputError);
  }
}

TEST(HybridLM, CudaForwardMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  HybridLM m(tiny_config("M*-M-"));
  m->init_random(8);
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 97, {2, 37}, torch::kInt64);
  auto ref = m->forward(tokens);
  m->to(torch::kCUDA);
  auto gpu = m->forward(tokens.to(torch::kCUDA)).cpu();
  EXPECT_LT((gpu - ref).abs().max().item<double>(), 1e-4);  // TF32 off by default in LibTorch matmuls
  m->to(torch::kBFloat16);
  auto low = m->forward(tokens.to(torch::kCUDA)).cpu();
  EXPECT_LT(((low - ref).norm() / ref.norm()).item<double>(), 5e-2);
}
