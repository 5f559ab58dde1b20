// Small configs shared by the model tests.
#pragma once

#include "minipuzzle/model_config.h"

namespace minipuzzle::testing {

inline ModelConfig tiny_config(const std::string& pattern = "M*-M-", int64_t groups = 2) {
  nlohmann::json j = {{"vocab_size", 97},        {"hidden_size", 32},     {"hybrid_override_pattern", pattern},
                      {"intermediate_size", 48}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                      {"head_dim", 12},          {"mamba_num_heads", 4},  {"mamba_head_dim", 8},
                      {"ssm_state_size", 8},     {"n_groups", groups},    {"conv_kernel", 4},
                      {"chunk_size", 8}};
  return ModelConfig::from_json(j, "tiny");
}

// `base` (tiny_config by default) plus MoE layers: 6 routed experts in 3
// router groups (2 groups chosen per token, 2 experts per token), expert
// width 10, shared expert width 14; `latent` > 0 adds latent projections of
// that width.
inline ModelConfig tiny_moe_config(const std::string& pattern = "M*EM-E", int64_t latent = 0,
                                   const ModelConfig& base = tiny_config("M*-")) {
  nlohmann::json j = base.to_json();
  j["hybrid_override_pattern"] = pattern;
  j["num_hidden_layers"] = pattern.size();
  j["n_routed_experts"] = 6;
  j["moe_intermediate_size"] = 10;
  j["moe_shared_expert_intermediate_size"] = 14;
  j["num_experts_per_tok"] = 2;
  j["n_group"] = 3;
  j["topk_group"] = 2;
  j["routed_scaling_factor"] = 2.5;
  if (latent > 0) j["moe_latent_size"] = latent;
  return ModelConfig::from_json(j, "tiny-moe");
}

}  // namespace minipuzzle::testing
