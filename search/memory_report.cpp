#include "minipuzzle/memory_report.h"

#include <fmt/format.h>

#include "minipuzzle/errors.h"

namespace minipuzzle {
using nlohmann::json;

namespace {

const json& field(const json& j, const char* key, const std::string& source) {
  if (!j.is_object()) throw InputError(source + ": expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) throw InputError(source + ": missing key \"" + key + "\"");
  return *it;
}

int64_t get_int(const json& j, const char* key, const std::string& source) {
  const json& v = field(j, key, source);
  if (!v.is_number_integer()) throw InputError(source + ": key \"" + key + "\" must be an integer");
  return v.get<int64_t>();
}

double get_number(const json& j, const char* key, const std::string& source) {
  const json& v = field(j, key, source);
  if (!v.is_number()) throw InputError(source + ": key \"" + key + "\" must be a number");
  return v.get<double>();
}

Precision get_precision(const json& j, const char* key, const std::string& source) {
  const json& v = field(j, key, source);
  if (!v.is_string()) throw InputError(source + ": key \"" + key + "\" must be a precision name");
  return parse_precision(v.get<std::string>(), source + ": key \"" + key + "\"");
}

// 56320426240 -> "56,320,426,240": parameter counts read at a glance.
std::string grouped(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return v < 0 ? "-" + out : out;
}

std::string gib(double bytes) { return format_bytes(bytes); }

// The export formats (as `export --dtype` writes them), then the paper's fp4 accounting.
constexpr Precision kWeightPrecisions[] = {Precision::Bf16, Precision::Fp8, Precision::Nvfp4, Precision::Int4,
                                           Precision::Fp4};

}  // namespace

json deployment_to_json(const Deployment& d) {
  return {{"weights", precision_name(d.weights)}, {"kv_cache", precision_name(d.kv_cache)},
          {"state", precision_name(d.state)},     {"context", d.context},
          {"batch", d.batch},                     {"workspace_bytes", d.workspace_bytes}};
}

Deployment deployment_from_json(const json& j, const std::string& source) {
  Deployment d;
  d.weights = get_precision(j, "weights", source);
  d.kv_cache = get_precision(j, "kv_cache", source);
  d.state = get_precision(j, "state", source);
  d.context = get_int(j, "context", source);
  d.batch = get_int(j, "batch", source);
  d.workspace_bytes = get_number(j, "workspace_bytes", source);
  try {
    d.validate();
  } catch (const InputError& e) {
    throw InputError(source + ": " + e.what());
  }
  return d;
}

json params_to_json(const ParamCounts& p) {
  json j = {{"total", p.total},
          {"non_embedding", p.non_embedding()},
          {"embeddings", p.embeddings},
          {"lm_head", p.lm_head},
          {"final_norm", p.final_norm},
          {"per_layer", {{"mamba", p.per_mamba_layer}, {"attention", p.per_attention_layer}, {"mlp", p.per_mlp_layer}}},
          {"by_type", {{"mamba", p.mamba}, {"attention", p.attention}, {"mlp", p.mlp}}}};
  // MoE keys only for MoE models: the JSON of the others stays as it was.
  if (p.moe > 0) {
    j["per_layer"]["moe"] = p.per_moe_layer;
    j["by_type"]["moe"] = p.moe;
    j["moe_routed_experts"] = p.moe_routed_experts;
    j["active"] = p.active;
  }
  return j;
}

ParamCounts params_from_json(const json& j, const std::string& source) {
  ParamCounts p;
  p.total = get_int(j, "total", source);
  p.embeddings = get_int(j, "embeddings", source);
  p.lm_head = get_int(j, "lm_head", source);
  p.final_norm = get_int(j, "final_norm", source);
  const json& per = field(j, "per_layer", source);
  const json& by = field(j, "by_type", source);
  p.per_mamba_layer = get_int(per, "mamba", source + " per_layer");
  p.per_attention_layer = get_int(per, "attention", source + " per_layer");
  p.per_mlp_layer = get_int(per, "mlp", source + " per_layer");
  p.mamba = get_int(by, "mamba", source + " by_type");
  p.attention = get_int(by, "attention", source + " by_type");
  p.mlp = get_int(by, "mlp", source + " by_type");
  p.active = p.total;
  if (by.contains("moe")) {
    p.per_moe_layer = get_int(per, "moe", source + " per_layer");
    p.moe = get_int(by, "moe", source + " by_type");
    p.moe_routed_experts = get_int(j, "moe_routed_experts", source);
    p.active = get_int(j, "active", source);
  }
  return p;
}

json memory_to_json(const MemoryBreakdown& m) {
  return {{"weights_bytes", m.weights},     {"kv_cache_bytes", m.kv_cache},   {"mamba_ssm_bytes", m.mamba_ssm},
          {"mamba_conv_bytes", m.mamba_conv}, {"workspace_bytes", m.workspace}, {"total_bytes", m.total},
          {"total_gib", m.total / kGiB}};
}

MemoryBreakdown memory_from_json(const json& j, const std::string& source) {
  MemoryBreakdown m;
  m.weights = get_number(j, "weights_bytes", source);
  m.kv_cache = get_number(j, "kv_cache_bytes", source);
  m.mamba_ssm = get_number(j, "mamba_ssm_bytes", source);
  m.mamba_conv = get_number(j, "mamba_conv_bytes", source);
  m.workspace = get_number(j, "workspace_bytes", source);
  m.total = get_number(j, "total_bytes", source);
  return m;
}

json inspect_json(const ModelConfig& c, const Deployment& d, const std::string& source) {
  const ParamCounts p = count_parameters(c);
  json weight_bytes = json::object();
  for (Precision w : kWeightPrecisions)
    weight_bytes[precision_name(w)] = minipuzzle::weight_bytes(c, w);
  json arch = {{"pattern", c.pattern},
               {"layers", c.num_layers()},
               {"counts", {{"mamba", c.count(LayerType::Mamba)}, {"attention", c.count(LayerType::Attention)},
                           {"mlp", c.count(LayerType::Mlp)}}},
               {"vocab_size", c.vocab_size},
               {"hidden_size", c.hidden_size},
               {"intermediate_size", c.intermediate_size},
               {"num_attention_heads", c.num_attention_heads},
               {"num_key_value_heads", c.num_key_value_heads},
               {"head_dim", c.head_dim},
               {"mamba_num_heads", c.mamba_num_heads},
               {"mamba_head_dim", c.mamba_head_dim},
               {"ssm_state_size", c.ssm_state_size},
               {"n_groups", c.n_groups},
               {"conv_kernel", c.conv_kernel},
               {"mamba_d_inner", c.mamba_d_inner()},
               {"mamba_conv_dim", c.mamba_conv_dim()}};
  if (c.has_moe()) {
    arch["counts"]["moe"] = c.count(LayerType::Moe);
    arch["moe"] = {{"n_routed_experts", c.n_routed_experts},
                   {"num_experts_per_tok", c.num_experts_per_tok},
                   {"moe_intermediate_size", c.moe_intermediate_size},
                   {"moe_shared_expert_intermediate_size", c.moe_shared_expert_intermediate_size},
                   {"moe_latent_size", c.moe_latent_size},
                   {"n_group", c.n_group},
                   {"topk_group", c.topk_group},
                   {"norm_topk_prob", c.norm_topk_prob},
                   {"routed_scaling_factor", c.routed_scaling_factor},
                   {"num_nextn_predict_layers", c.num_nextn_predict_layers}};
  }
  return {{"source", source},
          {"architecture", arch},
          {"parameters", params_to_json(p)},
          {"weight_bytes", weight_bytes},
          {"deployment", deployment_to_json(d)},
          {"memory", memory_to_json(memory_breakdown(c, d))}};
}

std::string inspect_text(const ModelConfig& c, const Deployment& d, const std::string& source) {
  const ParamCounts p = count_parameters(c);
  const MemoryBreakdown m = memory_breakdown(c, d);
  std::string out = fmt::format("{}\n", source);
  out += fmt::format("architecture: {} layers: {} Mamba (M), {} attention (*), {} MLP (-)", c.num_layers(),
                     c.count(LayerType::Mamba), c.count(LayerType::Attention), c.count(LayerType::Mlp));
  out += c.has_moe() ? fmt::format(", {} MoE (E)\n", c.count(LayerType::Moe)) : std::string("\n");
  out += fmt::format("  pattern    {}\n", c.pattern);
  out += fmt::format("  hidden     {}, vocab {}, FFN {}\n", c.hidden_size, c.vocab_size, c.intermediate_size);
  if (c.count(LayerType::Attention) > 0)
    out += fmt::format("  attention  {} heads, {} kv heads, head_dim {}\n", c.num_attention_heads,
                       c.num_key_value_heads, c.head_dim);
  if (c.count(LayerType::Mamba) > 0)
    out += fmt::format("  mamba      {} heads x {}, state {}, {} groups, conv {} (d_inner {}, conv_dim {})\n",
                       c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size, c.n_groups, c.conv_kernel,
                       c.mamba_d_inner(), c.mamba_conv_dim());
  if (c.has_moe()) {
    out += fmt::format("  moe        {} routed experts, {} per token, expert FFN {}, shared expert FFN {}", c.n_routed_experts,
                       c.num_experts_per_tok, c.moe_intermediate_size, c.moe_shared_expert_intermediate_size);
    if (c.moe_latent_size > 0) out += fmt::format(", latent {}", c.moe_latent_size);
    out += fmt::format(", router {} groups (top {}), scaling {}\n", c.n_group, c.topk_group, c.routed_scaling_factor);
  }
  if (c.num_nextn_predict_layers > 0)
    out += fmt::format("  mtp        {} multi-token-prediction layers in the config: not loaded, not counted, not "
                       "written (as transformers)\n", c.num_nextn_predict_layers);
  out += "parameters:\n";
  auto row = [&](const std::string& name, int64_t v) { out += fmt::format("  {:<28}{:>18}\n", name, grouped(v)); };
  row("embeddings", p.embeddings);
  row("lm_head", p.lm_head);
  row("final norm", p.final_norm);
  row(fmt::format("mamba     {:>3} x {}", c.count(LayerType::Mamba), grouped(p.per_mamba_layer)), p.mamba);
  row(fmt::format("attention {:>3} x {}", c.count(LayerType::Attention), grouped(p.per_attention_layer)), p.attention);
  row(fmt::format("mlp       {:>3} x {}", c.count(LayerType::Mlp), grouped(p.per_mlp_layer)), p.mlp);
  if (c.has_moe())
    row(fmt::format("moe       {:>3} x {}", c.count(LayerType::Moe), grouped(p.per_moe_layer)), p.moe);
  row(fmt::format("total ({:.2f}B)", static_cast<double>(p.total) / 1e9), p.total);
  if (c.has_moe()) {
    row(fmt::format("active per token ({:.2f}B)", static_cast<double>(p.active) / 1e9), p.active);
    const int64_t active_non_embedding = p.active - p.embeddings - p.lm_head;
    row(fmt::format("  without embeddings ({:.2f}B)", static_cast<double>(active_non_embedding) / 1e9),
        active_non_embedding);
  }
  out += "weights:";
  for (Precision w : kWeightPrecisions)
    out += fmt::format("  {} {}", precision_name(w), gib(weight_bytes(c, w)));
  out += fmt::format("\nmemory at weights {}, KV cache {}, state {}, context {}, batch {}{}:\n", precision_name(d.weights),
                     precision_name(d.kv_cache), precision_name(d.state), d.context, d.batch,
                     c.has_moe() ? ", every routed expert resident" : "");
  auto mem = [&](const char* name, double bytes) { out += fmt::format("  {:<12}{:>14}\n", name, gib(bytes)); };
  mem("weights", m.weights);
  mem("KV cache", m.kv_cache);
  mem("Mamba SSM", m.mamba_ssm);
  mem("Mamba conv", m.mamba_conv);
  if (m.workspace > 0) mem("workspace", m.workspace);
  mem("total", m.total);
  return out;
}

}  // namespace minipuzzle
