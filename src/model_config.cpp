#include "minipuzzle/model_config.h"

#include <cmath>
#include <set>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace fs = std::filesystem;
using nlohmann::json;

const char* layer_type_name(LayerType t) {
  switch (t) {
    case LayerType::Mamba: return "mamba";
    case LayerType::Attention: return "attention";
    case LayerType::Mlp: return "mlp";
    case LayerType::Moe: return "moe";
  }
  return "?";
}

int64_t ModelConfig::count(LayerType t) const {
  int64_t n = 0;
  for (char c : pattern) n += (c == static_cast<char>(t));
  return n;
}

namespace {

// Upper bounds that keep a hostile config from asking for absurd allocations.
constexpr int64_t kMaxDim = int64_t{1} << 22;     // any width
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;

[[noreturn]] void fail(const std::string& source, const std::string& msg) {
  throw InputError(source + ": " + msg);
}

// Finds the first of `keys` present in `j`; the first key is the canonical one.
const json* find_key(const json& j, std::initializer_list<const char*> keys, std::string* found) {
  for (const char* k : keys) {
    auto it = j.find(k);
    if (it != j.end() && !it->is_null()) {
      if (found) *found = k;
      return &*it;
    }
  }
  return nullptr;
}

int64_t get_int(const json& j, std::initializer_list<const char*> keys, const std::string& source,
                bool required, int64_t fallback) {
  std::string key;
  const json* v = find_key(j, keys, &key);
  if (!v) {
    if (required) fail(source, std::string("missing key \"") + *keys.begin() + "\"");
    return fallback;
  }
  if (v->is_number_integer() || v->is_number_unsigned()) return v->get<int64_t>();
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  fail(source, "key \"" + key + "\" must be an integer, got " + v->dump());
}

double to_double(const json& v, const std::string& key, const std::string& source) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
  }
  fail(source, "key \"" + key + "\" must be a number, got " + v.dump());
}

double get_double(const json& j, std::initializer_list<const char*> keys, const std::string& source,
                  double fallback) {
  std::string key;
  const json* v = find_key(j, keys, &key);
  return v ? to_double(*v, key, source) : fallback;
}

bool get_bool(const json& j, std::initializer_list<const char*> keys, const std::string& source,
              bool fallback) {
  std::string key;
  const json* v = find_key(j, keys, &key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail(source, "key \"" + key + "\" must be true or false, got " + v->dump());
  return v->get<bool>();
}

// transformers 5 names ("linear_attention", "full_attention") and the older
// Hub names ("mamba", "attention") both occur in the wild.
char block_type_char(const std::string& name, const std::string& source, size_t index) {
  if (name == "mamba" || name == "linear_attention") return 'M';
  if (name == "attention" || name == "full_attention") return '*';
  if (name == "mlp") return '-';
  if (name == "moe") return 'E';
  fail(source, "layers_block_type[" + std::to_string(index) + "] is \"" + name +
                   "\"; expected \"linear_attention\" (or \"mamba\"), \"full_attention\" (or \"attention\"), \"mlp\" or \"moe\"");
}

// Every key the reader interprets; the rest goes to `extra`.
const std::set<std::string>& interpreted_keys() {
  static const std::set<std::string> keys = {
      "vocab_size", "hidden_size", "hybrid_override_pattern", "layers_block_type",
      "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
      "head_dim", "attention_head_dim", "mamba_num_heads", "mamba_head_dim", "ssm_state_size",
      "n_groups", "mamba_n_groups", "conv_kernel", "mamba_d_conv", "chunk_size",
      "mamba_chunk_size", "expand", "mamba_expand", "time_step_min", "mamba_dt_min",
      "use_conv_bias", "mamba_conv_bias", "mamba_proj_bias", "attention_bias", "mlp_bias",
      "tie_word_embeddings", "layer_norm_epsilon"};
  return keys;
}

// Keys interpreted only when the pattern has MoE layers (written back then).
const std::set<std::string>& moe_keys() {
  static const std::set<std::string> keys = {
      "n_routed_experts", "num_local_experts", "n_shared_experts", "moe_intermediate_size",
      "moe_shared_expert_intermediate_size", "moe_latent_size", "num_experts_per_tok", "n_group",
      "topk_group", "norm_topk_prob", "routed_scaling_factor"};
  return keys;
}

}  // namespace

void ModelConfig::validate(const std::string& source) const {
  // Sizes in [lo, max] with lo 0 or 1; one message shape for every key.
  auto bounded = [&](int64_t v, const char* key, int64_t lo, int64_t max) {
    if (v < lo)
      fail(source, std::string("key \"") + key + (lo > 0 ? "\" must be positive, got " : "\" must not be negative, got ") +
                       std::to_string(v));
    if (v > max)
      fail(source, std::string("key \"") + key + "\" is " + std::to_string(v) + ", larger than the supported " +
                       std::to_string(max));
  };
  auto positive = [&](int64_t v, const char* key, int64_t max) { bounded(v, key, 1, max); };
  // Every size is range-checked, also those of layer types the pattern lacks:
  // derived sizes (d_inner, q_dim, in_proj) and parameter counts use them all.
  auto in_range = [&](int64_t v, const char* key, int64_t max) { bounded(v, key, 0, max); };
  in_range(intermediate_size, "intermediate_size", kMaxDim);
  in_range(num_attention_heads, "num_attention_heads", kMaxDim);
  in_range(num_key_value_heads, "num_key_value_heads", kMaxDim);
  in_range(head_dim, "head_dim", kMaxDim);
  in_range(mamba_num_heads, "mamba_num_heads", kMaxDim);
  in_range(mamba_head_dim, "mamba_head_dim", kMaxDim);
  in_range(ssm_state_size, "ssm_state_size", kMaxDim);
  in_range(n_groups, "n_groups", kMaxDim);
  in_range(conv_kernel, "conv_kernel", 64);
  in_range(chunk_size, "chunk_size", kMaxDim);
  in_range(expand, "expand", kMaxDim);
  in_range(attention_q_dim(), "num_attention_heads*head_dim", kMaxDim);
  in_range(attention_kv_dim(), "num_key_value_heads*head_dim", kMaxDim);
  in_range(mamba_in_proj_dim(), "mamba in_proj size", kMaxDim);
  positive(vocab_size, "vocab_size", kMaxVocab);
  positive(hidden_size, "hidden_size", kMaxDim);
  if (pattern.empty()) fail(source, "the layer pattern (hybrid_override_pattern) is empty");
  if (static_cast<int64_t>(pattern.size()) > kMaxLayers)
    fail(source, "the layer pattern has " + std::to_string(pattern.size()) + " layers, more than the supported " +
                     std::to_string(kMaxLayers));
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c != 'M' && c != '*' && c != '-' && c != 'E')
      fail(source, std::string("hybrid_override_pattern has unknown layer character '") + c + "' at position " +
                       std::to_string(i) + "; expected M (Mamba2), * (attention), - (MLP) or E (MoE)");
  }
  if (count(LayerType::Mlp) > 0) positive(intermediate_size, "intermediate_size", kMaxDim);
  if (count(LayerType::Attention) > 0) {
    positive(num_attention_heads, "num_attention_heads", kMaxDim);
    positive(num_key_value_heads, "num_key_value_heads", kMaxDim);
    positive(head_dim, "head_dim", kMaxDim);
    if (num_attention_heads % num_key_value_heads != 0)
      fail(source, "num_attention_heads (" + std::to_string(num_attention_heads) +
                       ") must be a multiple of num_key_value_heads (" + std::to_string(num_key_value_heads) + ")");
    positive(attention_q_dim(), "num_attention_heads*head_dim", kMaxDim);
  }
  if (count(LayerType::Mamba) > 0) {
    positive(mamba_num_heads, "mamba_num_heads", kMaxDim);
    positive(mamba_head_dim, "mamba_head_dim", kMaxDim);
    positive(ssm_state_size, "ssm_state_size", kMaxDim);
    positive(n_groups, "n_groups", kMaxDim);
    positive(conv_kernel, "conv_kernel", 64);
    positive(chunk_size, "chunk_size", kMaxDim);
    positive(mamba_in_proj_dim(), "mamba in_proj size", kMaxDim);
    if (mamba_num_heads % n_groups != 0)
      fail(source, "mamba_num_heads (" + std::to_string(mamba_num_heads) + ") must be a multiple of n_groups (" +
                       std::to_string(n_groups) + ")");
    if (!(time_step_min >= 0) || !std::isfinite(time_step_min))
      fail(source, "time_step_min must be a finite number >= 0");
  }
  if (has_moe()) {
    positive(n_routed_experts, "n_routed_experts", kMaxDim);
    positive(moe_intermediate_size, "moe_intermediate_size", kMaxDim);
    positive(moe_shared_expert_intermediate_size, "moe_shared_expert_intermediate_size", kMaxDim);
    in_range(moe_latent_size, "moe_latent_size", kMaxDim);
    in_range(n_shared_experts, "n_shared_experts", kMaxDim);
    positive(n_group, "n_group", kMaxDim);
    positive(topk_group, "topk_group", kMaxDim);
    positive(num_experts_per_tok, "num_experts_per_tok", kMaxDim);
    const std::string e = std::to_string(n_routed_experts), g = std::to_string(n_group);
    if (n_routed_experts % n_group != 0)
      fail(source, "n_routed_experts (" + e + ") must be a multiple of n_group (" + g + ")");
    // The router ranks a group by the sum of its two best scores.
    if (n_routed_experts / n_group < 2)
      fail(source, "n_routed_experts (" + e + ") / n_group (" + g + ") must be at least 2 experts per group");
    if (topk_group > n_group)
      fail(source, "topk_group (" + std::to_string(topk_group) + ") must be at most n_group (" + g + ")");
    if (num_experts_per_tok > topk_group * (n_routed_experts / n_group))
      fail(source, "num_experts_per_tok (" + std::to_string(num_experts_per_tok) + ") is more than the " +
                       std::to_string(topk_group * (n_routed_experts / n_group)) +
                       " experts of the topk_group groups a token may use");
    if (!std::isfinite(routed_scaling_factor)) fail(source, "routed_scaling_factor must be a finite number");
  }
  in_range(num_nextn_predict_layers, "num_nextn_predict_layers", kMaxLayers);
  if (!(layer_norm_epsilon > 0) || !std::isfinite(layer_norm_epsilon))
    fail(source, "layer_norm_epsilon must be a positive number");
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, "expected a JSON object");
  ModelConfig c;
  c.vocab_size = get_int(j, {"vocab_size"}, source, true, 0);
  c.hidden_size = get_int(j, {"hidden_size"}, source, true, 0);

  // Layer kinds: Hub pattern string or transformers-5 list.
  auto pat = j.find("hybrid_override_pattern");
  auto blocks = j.find("layers_block_type");
  // transformers prefers layers_block_type when both are present; so do we.
  if (blocks != j.end() && blocks->is_array()) {
    for (size_t i = 0; i < blocks->size(); ++i) {
      const json& b = (*blocks)[i];
      if (!b.is_string()) fail(source, "layers_block_type[" + std::to_string(i) + "] must be a string");
      c.pattern.push_back(block_type_char(b.get<std::string>(), source, i));
    }
  } else if (pat != j.end() && pat->is_string()) {
    c.pattern = pat->get<std::string>();
  } else {
    fail(source, "missing key \"hybrid_override_pattern\" (or \"layers_block_type\")");
  }
  std::string key;
  if (const json* n = find_key(j, {"num_hidden_layers"}, &key)) {
    int64_t layers = get_int(j, {"num_hidden_layers"}, source, true, 0);
    if (layers != static_cast<int64_t>(c.pattern.size()))
      fail(source, "num_hidden_layers is " + std::to_string(layers) + " but the layer pattern has " +
                       std::to_string(c.pattern.size()) + " layers");
    (void)n;
  }

  c.intermediate_size = get_int(j, {"intermediate_size"}, source, false, 0);
  c.num_attention_heads = get_int(j, {"num_attention_heads"}, source, false, 0);
  // Defaults for absent keys are transformers' NemotronHConfig defaults (kv
  // heads 8, head_dim 128, n_groups 8), so a sparse config means the same
  // model to us and to transformers.
  c.num_key_value_heads = get_int(j, {"num_key_value_heads"}, source, false, 8);
  c.head_dim = get_int(j, {"head_dim", "attention_head_dim"}, source, false, 128);
  c.mamba_num_heads = get_int(j, {"mamba_num_heads"}, source, false, 0);
  c.mamba_head_dim = get_int(j, {"mamba_head_dim"}, source, false, 0);
  c.ssm_state_size = get_int(j, {"ssm_state_size"}, source, false, 0);
  c.n_groups = get_int(j, {"n_groups", "mamba_n_groups"}, source, false, 8);
  c.conv_kernel = get_int(j, {"conv_kernel", "mamba_d_conv"}, source, false, 4);
  c.chunk_size = get_int(j, {"chunk_size", "mamba_chunk_size"}, source, false, 128);
  c.expand = get_int(j, {"expand", "mamba_expand"}, source, false, 2);
  c.time_step_min = get_double(j, {"time_step_min", "mamba_dt_min"}, source, 0.001);
  c.use_conv_bias = get_bool(j, {"use_conv_bias", "mamba_conv_bias"}, source, true);
  c.mamba_proj_bias = get_bool(j, {"mamba_proj_bias"}, source, false);
  c.attention_bias = get_bool(j, {"attention_bias"}, source, false);
  c.mlp_bias = get_bool(j, {"mlp_bias"}, source, false);
  c.tie_word_embeddings = get_bool(j, {"tie_word_embeddings"}, source, false);
  c.layer_norm_epsilon = get_double(j, {"layer_norm_epsilon"}, source, 1e-5);

  const bool moe = c.count(LayerType::Moe) > 0;
  if (moe) {
    // The sizes have transformers defaults, but a checkpoint without them is
    // almost surely not the model it claims to be: required.
    auto required = [&](std::initializer_list<const char*> keys) {
      if (!find_key(j, keys, nullptr))
        fail(source, std::string("missing key \"") + *keys.begin() + "\" (required: the pattern has MoE layers)");
      return get_int(j, keys, source, true, 0);
    };
    c.n_routed_experts = required({"n_routed_experts", "num_local_experts"});
    c.moe_intermediate_size = required({"moe_intermediate_size"});
    c.moe_shared_expert_intermediate_size = required({"moe_shared_expert_intermediate_size"});
    c.num_experts_per_tok = required({"num_experts_per_tok"});
    c.n_shared_experts = get_int(j, {"n_shared_experts"}, source, false, 1);
    c.moe_latent_size = get_int(j, {"moe_latent_size"}, source, false, 0);
    c.n_group = get_int(j, {"n_group"}, source, false, 1);
    c.topk_group = get_int(j, {"topk_group"}, source, false, 1);
    c.norm_topk_prob = get_bool(j, {"norm_topk_prob"}, source, true);
    c.routed_scaling_factor = get_double(j, {"routed_scaling_factor"}, source, 1.0);
  }
  // Left in `extra` as well: written back unchanged (MTP tensors are not
  // loaded; README, MoE).
  c.num_nextn_predict_layers = get_int(j, {"num_nextn_predict_layers"}, source, false, 0);

  // transformers builds the Mamba projections with `use_bias` (mamba_proj_bias
  // is unused there) and the attention projections without bias.
  if (c.attention_bias || c.mlp_bias || get_bool(j, {"use_bias"}, source, false))
    fail(source, "bias terms in projections (attention_bias/mlp_bias/use_bias) are not supported");
  if (c.tie_word_embeddings)
    fail(source, "tie_word_embeddings=true is not supported: Nemotron-H has a separate lm_head");
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "mlp_hidden_act" && it->is_string() && it->get<std::string>() != "relu2")
      fail(source, "mlp_hidden_act is \"" + it->get<std::string>() + "\"; only \"relu2\" is supported");
    // time_step_limit is ignored by transformers' mixer (it clamps at
    // time_step_min) and transformers 5 writes it with a tagged Infinity; we
    // neither use nor rewrite it.
    if (it.key() == "time_step_limit" || it.key() == "mamba_dt_limit") continue;
    if (!interpreted_keys().count(it.key()) && !(moe && moe_keys().count(it.key()))) c.extra[it.key()] = *it;
  }
  c.validate(source);
  return c;
}

nlohmann::json parse_json_lenient(const std::string& text, const std::string& source) {
  // Python's json writes bare Infinity/-Infinity/NaN; turn them into strings
  // outside of string literals so a strict parser accepts the document.
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char ch = text[i];
    if (in_string) {
      out.push_back(ch);
      if (ch == '\\' && i + 1 < text.size()) out.push_back(text[++i]);
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') { in_string = true; out.push_back(ch); continue; }
    auto starts = [&](const char* w) { return text.compare(i, std::char_traits<char>::length(w), w) == 0; };
    if (starts("-Infinity")) { out += "\"-Infinity\""; i += 8; continue; }
    if (starts("Infinity")) { out += "\"Infinity\""; i += 7; continue; }
    if (starts("NaN")) { out += "\"NaN\""; i += 2; continue; }
    out.push_back(ch);
  }
  auto limit_depth = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonNesting)
      throw InputError(source + ": JSON nested deeper than " + std::to_string(kMaxJsonNesting) + " levels");
    return true;
  };
  try {
    return json::parse(out, limit_depth);
  } catch (const json::exception& e) {
    throw InputError(source + ": invalid JSON (" + std::string(e.what()) + ")");
  }
}

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& source) {
  return from_json(parse_json_lenient(text, source), source);
}

ModelConfig ModelConfig::load(const fs::path& dir_or_file) {
  fs::path file = dir_or_file;
  std::error_code ec;
  if (fs::is_directory(dir_or_file, ec)) file = dir_or_file / "config.json";
  else if (!fs::exists(dir_or_file, ec)) throw InputError(dir_or_file.string() + ": no such file or directory");
  return from_json_text(read_file(file), file.string());
}

json ModelConfig::to_json() const {
  json j = extra;
  j["architectures"] = json::array({"NemotronHForCausalLM"});
  j["model_type"] = "nemotron_h";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_layers();
  j["hybrid_override_pattern"] = pattern;
  j["intermediate_size"] = intermediate_size;
  j["mlp_hidden_act"] = "relu2";
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["mamba_num_heads"] = mamba_num_heads;
  j["mamba_head_dim"] = mamba_head_dim;
  j["ssm_state_size"] = ssm_state_size;
  j["n_groups"] = n_groups;
  j["conv_kernel"] = conv_kernel;
  j["chunk_size"] = chunk_size;
  j["expand"] = expand;
  j["use_conv_bias"] = use_conv_bias;
  j["mamba_proj_bias"] = mamba_proj_bias;
  j["attention_bias"] = attention_bias;
  j["mlp_bias"] = mlp_bias;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["layer_norm_epsilon"] = layer_norm_epsilon;
  j["time_step_min"] = time_step_min;
  if (has_moe()) {
    j["n_routed_experts"] = n_routed_experts;
    j["n_shared_experts"] = n_shared_experts;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["moe_shared_expert_intermediate_size"] = moe_shared_expert_intermediate_size;
    if (moe_latent_size > 0) j["moe_latent_size"] = moe_latent_size;
    else j["moe_latent_size"] = nullptr;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["norm_topk_prob"] = norm_topk_prob;
    j["routed_scaling_factor"] = routed_scaling_factor;
  }
  return j;
}

std::string ModelConfig::to_json_text() const {
  // Strict JSON: a bare Infinity read from a Python-written file stays the
  // string "Infinity" (transformers 5 rejects bare non-finite numbers).
  return to_json().dump(2) + "\n";
}

void ModelConfig::save(const fs::path& dir) const { write_file_atomic(dir / "config.json", to_json_text()); }

bool ModelConfig::operator==(const ModelConfig& o) const { return to_json() == o.to_json(); }

}  // namespace minipuzzle
