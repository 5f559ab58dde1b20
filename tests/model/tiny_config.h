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

}  // namespace minipuzzle::testing
