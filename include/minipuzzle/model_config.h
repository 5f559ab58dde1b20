// ModelConfig: the one description of a Nemotron-H architecture, used by the
// loaded model, a search candidate, a pruned model and an exported
// config.json alike. Plain C++ (no LibTorch) so search/ builds without it.
//
// Reads Hub style (`hybrid_override_pattern`, `mamba_*` aliases) and
// transformers-5 style (`layers_block_type`); always writes Hub style.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace minipuzzle {

// The layer kinds of the hybrid pattern, by their Hub pattern character.
enum class LayerType : char { Mamba = 'M', Attention = '*', Mlp = '-', Moe = 'E' };

const char* layer_type_name(LayerType t);  // "mamba", "attention", "mlp", "moe"

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  std::string pattern;  // one character per layer: M, *, -

  int64_t intermediate_size = 0;  // MLP width

  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 128;  // its own key: heads*head_dim may differ from hidden

  int64_t mamba_num_heads = 0;
  int64_t mamba_head_dim = 0;
  int64_t ssm_state_size = 0;
  int64_t n_groups = 1;
  int64_t conv_kernel = 4;
  int64_t chunk_size = 128;
  int64_t expand = 2;  // informational upstream; d_inner is heads*head_dim
  // transformers' Mamba2 mixer clamps dt = softplus(dt + dt_bias) to
  // [time_step_min, inf) (it ignores `time_step_limit`); we match it.
  double time_step_min = 0.001;

  bool use_conv_bias = true;
  bool mamba_proj_bias = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  double layer_norm_epsilon = 1e-5;

  // Mixture-of-experts (`E`) layers, transformers' NemotronHMoE: a sigmoid
  // top-k router over `n_routed_experts` no-gate relu^2 experts of width
  // `moe_intermediate_size` (optionally between latent projections of
  // width `moe_latent_size`; 0 = none) plus one shared expert of width
  // `moe_shared_expert_intermediate_size`. Interpreted (and written) only
  // when the pattern has E layers; otherwise such keys stay in `extra`.
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 1;  // informational: transformers builds one shared MLP
  int64_t moe_intermediate_size = 0;
  int64_t moe_shared_expert_intermediate_size = 0;
  int64_t moe_latent_size = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1;     // router groups (not Mamba's n_groups)
  int64_t topk_group = 1;  // groups each token may choose experts from
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  // Multi-token-prediction layers: counted, never built (see README, MoE).
  int64_t num_nextn_predict_layers = 0;

  // Keys we do not interpret (token ids, dt init ranges, torch_dtype, ...),
  // carried through so an exported config keeps them.
  nlohmann::json extra = nlohmann::json::object();

  // --- derived sizes ---
  int64_t num_layers() const { return static_cast<int64_t>(pattern.size()); }
  LayerType layer_type(int64_t layer) const { return static_cast<LayerType>(pattern.at(layer)); }
  int64_t count(LayerType t) const;
  int64_t mamba_d_inner() const { return mamba_num_heads * mamba_head_dim; }
  int64_t mamba_conv_dim() const { return mamba_d_inner() + 2 * n_groups * ssm_state_size; }
  // in_proj rows: [z: d_inner | xBC: conv_dim | dt: heads]
  int64_t mamba_in_proj_dim() const { return mamba_d_inner() + mamba_conv_dim() + mamba_num_heads; }
  int64_t attention_q_dim() const { return num_attention_heads * head_dim; }
  int64_t attention_kv_dim() const { return num_key_value_heads * head_dim; }
  bool has_moe() const { return count(LayerType::Moe) > 0; }
  // The experts' input width: the latent size when there is one.
  int64_t moe_expert_input_dim() const { return moe_latent_size > 0 ? moe_latent_size : hidden_size; }

  // Throws InputError naming the offending key (prefixed by `source`).
  void validate(const std::string& source = "config") const;

  // Parses either style; validates. `source` names the file in messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config");
  // Parses JSON text, accepting the bare Infinity/NaN tokens Python writes.
  static ModelConfig from_json_text(const std::string& text, const std::string& source);
  // Reads DIR/config.json (or a path to a .json file).
  static ModelConfig load(const std::filesystem::path& dir_or_file);

  // Hub style, with `extra` merged in.
  nlohmann::json to_json() const;
  std::string to_json_text() const;  // pretty, strict JSON
  void save(const std::filesystem::path& dir) const;  // DIR/config.json, atomic

  bool operator==(const ModelConfig& o) const;
};

// JSON read from files is rejected when nested deeper than this: nlohmann
// copies and writes documents recursively, so a hostile `[[[[...` would
// overflow the stack later (our formats nest 4 levels; Hub configs about 5).
constexpr int kMaxJsonNesting = 64;

// Parses JSON text the way Python's json module does: bare Infinity,
// -Infinity and NaN outside strings are accepted (they become the strings
// "Infinity", "-Infinity", "NaN", which the config reader understands).
// Throws InputError "<source>: invalid JSON ..." on syntax errors and on
// nesting deeper than kMaxJsonNesting.
nlohmann::json parse_json_lenient(const std::string& text, const std::string& source);

}  // namespace minipuzzle
