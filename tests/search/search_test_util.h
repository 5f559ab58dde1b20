// Shared by the search tests: the published configs and a tiny hand-checkable
// one, transformers' parameter counts of them, and the paper's deployment.
#pragma once

#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "minipuzzle/memory_model.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle::test {

inline ModelConfig reference_config(const std::string& name) {  // "8b", "47b", "56b"
  return ModelConfig::load(std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/configs/nemotron-h-" + name +
                           ".config.json");
}

// Any config of tests/search/configs by its file stem ("nemotron-nano-9b-v2").
inline ModelConfig published_config(const std::string& stem) {
  return ModelConfig::load(std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/configs/" + stem + ".config.json");
}

// transformers' own count of a config's parameters (NemotronHForCausalLM on
// the meta device), per module group: an outside reference for ours.
// Regenerate with tests/search/make_transformers_counts.py.
inline ParamCounts transformers_counts(const std::string& key) {  // "nemotron-h-56b", ...
  const std::string path = std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/transformers_param_counts.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  const nlohmann::json all = nlohmann::json::parse(in);
  const nlohmann::json& j = all.at("configs").at(key);
  ParamCounts p;
  p.embeddings = j.at("embeddings");
  p.lm_head = j.at("lm_head");
  p.final_norm = j.at("final_norm");
  p.per_mamba_layer = j.at("per_mamba_layer");
  p.per_attention_layer = j.at("per_attention_layer");
  p.per_mlp_layer = j.at("per_mlp_layer");
  p.mamba = j.at("mamba");
  p.attention = j.at("attention");
  p.mlp = j.at("mlp");
  p.total = j.at("total");
  p.active = p.total;
  if (j.contains("moe")) {  // MoE configs
    p.per_moe_layer = j.at("per_moe_layer");
    p.moe = j.at("moe");
    p.moe_routed_experts = j.at("moe_routed_experts");
    p.active = j.at("active");
  }
  return p;
}

// D=64, V=100, "M*-M", Mamba 4 heads x 8, state 16, 2 groups, conv 4;
// attention 4 heads / 2 kv x 16; FFN 128. Small enough to count by hand.
inline ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 100;
  c.hidden_size = 64;
  c.pattern = "M*-M";
  c.intermediate_size = 128;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.mamba_num_heads = 4;
  c.mamba_head_dim = 8;
  c.ssm_state_size = 16;
  c.n_groups = 2;
  c.conv_kernel = 4;
  c.validate("tiny");
  return c;
}

// The paper's setting: 4-bit weights, FP8 KV cache, bf16 state, 1M context, batch 1.
inline Deployment paper_deployment() {
  Deployment d;
  d.weights = Precision::Fp4;
  d.kv_cache = Precision::Fp8;
  d.state = Precision::Bf16;
  d.context = 1000000;
  d.batch = 1;
  return d;
}

inline double paper_budget() { return 31.7 * kGiB; }

}  // namespace minipuzzle::test
