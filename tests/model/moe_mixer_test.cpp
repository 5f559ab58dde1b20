// The MoE (`E`) mixer: config reading, the router's group-limited choice by
// hand, the grouped expert computation against a dense every-expert
// reference, and autograd (router trained through the routing weights, the
// correction bias not). Parity with transformers: tests/oracle/test_moe_parity.py.
#include <gtest/gtest.h>

#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/moe_mixer.h"

namespace minipuzzle {
namespace {

ModelConfig moe_config(const std::string& pattern = "ME", int64_t latent = 0) {
  nlohmann::json j = {{"vocab_size", 61},           {"hidden_size", 24},       {"hybrid_override_pattern", pattern},
                      {"mamba_num_heads", 4},       {"mamba_head_dim", 6},     {"ssm_state_size", 8},
                      {"n_groups", 2},              {"chunk_size", 8},         {"n_routed_experts", 6},
                      {"num_attention_heads", 2},   {"num_key_value_heads", 1}, {"head_dim", 8},
                      {"moe_intermediate_size", 10}, {"moe_shared_expert_intermediate_size", 14},
                      {"num_experts_per_tok", 2},   {"n_group", 3},            {"topk_group", 2},
                      {"routed_scaling_factor", 2.5}};
  if (latent > 0) j["moe_latent_size"] = latent;
  return ModelConfig::from_json(j, "moe");
}

TEST(MoeConfig, ReadsBothStylesAndWritesTheKeysBack) {
  const ModelConfig c = moe_config("ME*E");
  EXPECT_EQ(c.count(LayerType::Moe), 2);
  EXPECT_EQ(c.n_routed_experts, 6);
  EXPECT_EQ(c.moe_latent_size, 0);
  EXPECT_TRUE(c.norm_topk_prob);
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(j["hybrid_override_pattern"], "ME*E");
  EXPECT_EQ(j["n_group"], 3);
  EXPECT_TRUE(j["moe_latent_size"].is_null());
  EXPECT_EQ(ModelConfig::from_json(j, "again"), c);
  nlohmann::json tf5 = j;
  tf5.erase("hybrid_override_pattern");
  tf5.erase("num_hidden_layers");
  tf5["layers_block_type"] = {"linear_attention", "moe", "full_attention", "moe"};
  EXPECT_EQ(ModelConfig::from_json(tf5, "tf5").pattern, "ME*E");
}

TEST(MoeConfig, MissingOrInfeasibleKeysAreInputErrors) {
  nlohmann::json j = moe_config().to_json();
  j.erase("moe_intermediate_size");
  try {
    ModelConfig::from_json(j, "cfg");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("moe_intermediate_size"), std::string::npos) << e.what();
  }
  j = moe_config().to_json();
  j["n_group"] = 4;  // 6 experts
  EXPECT_THROW(ModelConfig::from_json(j, "cfg"), InputError);
  j["n_group"] = 3;
  j["num_experts_per_tok"] = 5;  // 2 groups of 2 may be used
  EXPECT_THROW(ModelConfig::from_json(j, "cfg"), InputError);
  // Without E layers the MoE keys are carried, not interpreted.
  j["hybrid_override_pattern"] = "M";
  j["num_hidden_layers"] = 1;
  const ModelConfig plain = ModelConfig::from_json(j, "cfg");
  EXPECT_EQ(plain.n_routed_experts, 0);
  EXPECT_EQ(plain.extra["num_experts_per_tok"], 5);
}

TEST(MoeRouter, GroupLimitedChoiceByHand) {
  ModelConfig c = moe_config();
  // One token; logits chosen so that scores (sigmoid) rank experts
  // 0 > 5 > 4 > 1 > 2 > 3 and groups {0,1} {2,3} {4,5} sum their top-2:
  // group 0: s0+s1, group 2: s4+s5 are the two best; then top-2 of the
  // allowed experts {0,1,4,5} is {0,5}.
  auto x = torch::eye(6, torch::kFloat32).narrow(0, 0, 1).repeat({1, 4}).narrow(1, 0, 24);
  auto w = torch::zeros({6, 24});
  const float logits[6] = {3.0f, 0.5f, 0.2f, 0.1f, 1.0f, 2.0f};
  for (int e = 0; e < 6; ++e) w[e][0] = logits[e];
  auto bias = torch::zeros({6});
  RouterChoice r = route_tokens(x, w, bias, c);
  auto idx = std::get<0>(r.indices.sort(-1));
  EXPECT_EQ(idx[0][0].item<int64_t>(), 0);
  EXPECT_EQ(idx[0][1].item<int64_t>(), 5);
  // Weights: unbiased scores normalised, times 2.5.
  const double s0 = 1.0 / (1 + std::exp(-3.0));
  const double s5 = 1.0 / (1 + std::exp(-2.0));
  auto wsorted = r.weights.gather(1, std::get<1>(r.indices.sort(-1)));
  EXPECT_NEAR(wsorted[0][0].item<double>(), 2.5 * s0 / (s0 + s5), 1e-6);
  // A correction bias moves the choice (group 1 wins with a large bias on
  // expert 2) but not the weights' formula: they stay unbiased scores.
  bias[2] = 10.0f;
  bias[3] = 10.0f;
  r = route_tokens(x, w, bias, c);
  idx = std::get<0>(r.indices.sort(-1));
  EXPECT_EQ(idx[0][0].item<int64_t>(), 2);
  EXPECT_EQ(idx[0][1].item<int64_t>(), 3);
  const double s2 = 1.0 / (1 + std::exp(-0.2)), s3 = 1.0 / (1 + std::exp(-0.1));
  EXPECT_NEAR(r.weights.sum().item<double>(), 2.5 * (s2 + s3) / (s2 + s3), 1e-6);
}

// The grouped computation (tokens sorted by expert, one matmul pair per
// expert) against every expert on every token, masked: the dense product
// the mixer avoids.
torch::Tensor dense_reference(MoeMixerImpl& m, const torch::Tensor& x, const RouterChoice& r, int64_t E) {
  auto out = torch::zeros({x.size(0), x.size(1)}, torch::kFloat64);
  for (int64_t e = 0; e < E; ++e) {
    auto y = torch::linear(torch::relu(torch::linear(x.to(torch::kFloat64), m.experts[e]->up_proj->weight.to(torch::kFloat64))).square(),
                           m.experts[e]->down_proj->weight.to(torch::kFloat64));
    auto weight = (r.indices == e).to(torch::kFloat64).mul(r.weights.to(torch::kFloat64)).sum(-1, true);
    out += y * weight;
  }
  return out;
}

TEST(MoeMixer, GroupedExpertsMatchADenseReference) {
  torch::manual_seed(7);  // fixed inputs, whichever tests ran before in this process
  for (int64_t latent : {0, 8}) {
    const ModelConfig c = moe_config("ME", latent);
    HybridLM model(c);
    model->init_random(5);
    auto& mixer = *std::dynamic_pointer_cast<MoeMixerImpl>(model->layer(1)->named_children()["mixer"]);
    torch::NoGradGuard no_grad;
    auto x = torch::randn({37, c.moe_expert_input_dim()});
    auto h = torch::randn({37, c.hidden_size});
    RouterChoice r = route_tokens(h, mixer.gate->weight, mixer.gate->e_score_correction_bias, c);
    auto ours = mixer.routed_experts(x, r);
    auto ref = dense_reference(mixer, x, r, c.n_routed_experts);
    EXPECT_LT((ours.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-5) << "latent " << latent;
  }
}

TEST(MoeMixer, NamesFollowTheHub) {
  HybridLM model(moe_config("ME", 8));
  auto params = model->named_parameters();
  for (const char* n : {"backbone.layers.1.mixer.gate.weight", "backbone.layers.1.mixer.gate.e_score_correction_bias",
                        "backbone.layers.1.mixer.experts.0.up_proj.weight",
                        "backbone.layers.1.mixer.experts.5.down_proj.weight",
                        "backbone.layers.1.mixer.shared_experts.up_proj.weight",
                        "backbone.layers.1.mixer.fc1_latent_proj.weight",
                        "backbone.layers.1.mixer.fc2_latent_proj.weight"})
    EXPECT_TRUE(params.contains(n)) << n;
  EXPECT_EQ(params["backbone.layers.1.mixer.experts.0.up_proj.weight"].sizes(), (std::vector<int64_t>{10, 8}));
  EXPECT_EQ(params["backbone.layers.1.mixer.gate.e_score_correction_bias"].scalar_type(), torch::kFloat32);
  HybridLM bf16(moe_config("ME", 8), torch::kBFloat16);
  EXPECT_EQ(bf16->named_parameters()["backbone.layers.1.mixer.gate.e_score_correction_bias"].scalar_type(),
            torch::kFloat32);
}

TEST(MoeMixer, RouterTrainsThroughTheWeightsAndTheBiasDoesNot) {
  torch::manual_seed(7);  // fixed inputs, whichever tests ran before in this process
  HybridLM model(moe_config("ME"));
  model->init_random(9);
  auto tokens = torch::randint(0, 61, {2, 9}, torch::kInt64);
  model->forward(tokens).logsumexp(-1).sum().backward();
  auto params = model->named_parameters();
  const auto& gw = params["backbone.layers.1.mixer.gate.weight"].grad();
  ASSERT_TRUE(gw.defined());
  EXPECT_GT(gw.abs().sum().item<double>(), 0);
  EXPECT_FALSE(params["backbone.layers.1.mixer.gate.e_score_correction_bias"].requires_grad());
  EXPECT_FALSE(params["backbone.layers.1.mixer.gate.e_score_correction_bias"].grad().defined());
  int64_t experts_with_grad = 0;
  for (int e = 0; e < 6; ++e) {
    const auto& g = params["backbone.layers.1.mixer.experts." + std::to_string(e) + ".up_proj.weight"].grad();
    experts_with_grad += g.defined() && g.abs().sum().item<double>() > 0;
  }
  EXPECT_GT(experts_with_grad, 0);
}

// d(loss)/d(router weight) by central differences (fp64) vs autograd: the
// routing weights are the differentiable path (choices fixed nearby).
TEST(MoeMixer, RouterGradientMatchesFiniteDifferences) {
  torch::manual_seed(7);  // fixed inputs, whichever tests ran before in this process
  ModelConfig c = moe_config("E");
  auto x = torch::randn({5, c.hidden_size}, torch::kFloat64);
  auto w = (torch::randn({6, c.hidden_size}, torch::kFloat64) * 0.3).requires_grad_(true);
  auto bias = torch::zeros({6});
  auto f = [&](const torch::Tensor& wt) {
    RouterChoice r = route_tokens(x, wt, bias, c);
    return (r.weights.square().sum(-1) * torch::arange(1, 6, torch::kFloat32)).sum();
  };
  f(w).backward();
  auto g = w.grad();
  torch::NoGradGuard no_grad;
  const double eps = 1e-2;  // the router runs in fp32: a larger step keeps rounding below the tolerance
  for (int64_t i : {0, 7, 50, 100}) {
    auto wp = w.detach().clone(), wm = w.detach().clone();
    wp.view(-1)[i] += eps;
    wm.view(-1)[i] -= eps;
    const double fd = (f(wp).item<double>() - f(wm).item<double>()) / (2 * eps);
    EXPECT_NEAR(g.view(-1)[i].item<double>(), fd, 1e-3 + 1e-3 * std::abs(fd)) << i;
  }
}

}  // namespace
}  // namespace minipuzzle
