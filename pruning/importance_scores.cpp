#include "minipuzzle/importance_scores.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/expert_ranking.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "minipuzzle-importance";
constexpr int kVersion = 1;

// 64-bit FNV-1a: an identity check, not a defence against forgery.
struct Fnv64 {
  uint64_t h = 1469598103934665603ULL;
  void add(const void* data, std::size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  }
  void add(const std::string& s) { add(s.data(), s.size() + 1); }  // with the NUL as separator
  std::string hex() const { return fmt::format("{:016x}", h); }
};

// Only what defines the function the model computes: renaming keys, the
// stored dtype or other metadata does not change the identity.
json architecture_json(const ModelConfig& c) {
  json j = {{"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"pattern", c.pattern},
          {"intermediate_size", c.intermediate_size},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"head_dim", c.head_dim},
          {"mamba_num_heads", c.mamba_num_heads},
          {"mamba_head_dim", c.mamba_head_dim},
          {"ssm_state_size", c.ssm_state_size},
          {"n_groups", c.n_groups},
          {"conv_kernel", c.conv_kernel}};
  // Only with E layers, so the hashes of dense models stay what they were.
  if (c.has_moe())
    j["moe"] = {c.n_routed_experts, c.moe_intermediate_size, c.moe_shared_expert_intermediate_size,
                c.moe_latent_size,  c.num_experts_per_tok,   c.n_group,
                c.topk_group};
  return j;
}

// Every per-layer vector of the scores with its file name and the layer
// type and length it belongs to.
struct PerLayerAxis {
  const char* name;
  LayerType type;
  int64_t ModelConfig::*length;
  int64_t (ModelConfig::*derived)() const;
};
const std::vector<PerLayerAxis>& per_layer_axes() {
  static const std::vector<PerLayerAxis> axes = {
      {"ffn", LayerType::Mlp, &ModelConfig::intermediate_size, nullptr},
      {"attention_heads", LayerType::Attention, &ModelConfig::num_attention_heads, nullptr},
      {"mamba_channels", LayerType::Mamba, nullptr, &ModelConfig::mamba_d_inner},
      {"mamba_heads", LayerType::Mamba, &ModelConfig::mamba_num_heads, nullptr},
      {"mamba_head_channels", LayerType::Mamba, &ModelConfig::mamba_head_dim, nullptr},
      {"moe_experts", LayerType::Moe, &ModelConfig::n_routed_experts, nullptr},
      {"moe_expert_frequency", LayerType::Moe, &ModelConfig::n_routed_experts, nullptr},
      {"moe_expert_weight", LayerType::Moe, &ModelConfig::n_routed_experts, nullptr},
      {"moe_expert_neurons", LayerType::Moe, &ModelConfig::moe_intermediate_size, nullptr},
      {"moe_shared_neurons", LayerType::Moe, &ModelConfig::moe_shared_expert_intermediate_size, nullptr},
  };
  return axes;
}

// The vectors of `s` in per_layer_axes() order.
template <typename Scores>
auto per_layer_vectors(Scores& s) {
  return std::vector<decltype(&s.ffn)>{&s.ffn,
                                      &s.attention_heads,
                                      &s.mamba_channels,
                                      &s.mamba_heads,
                                      &s.mamba_head_channels,
                                      &s.moe_experts,
                                      &s.moe_expert_frequency,
                                      &s.moe_expert_weight,
                                      &s.moe_expert_neurons,
                                      &s.moe_shared_neurons};
}

std::string layer_key(int64_t layer, const char* axis) { return fmt::format("layers.{}.{}", layer, axis); }

void check_length(const std::vector<float>& v, int64_t want, const std::string& what, const std::string& source) {
  if (static_cast<int64_t>(v.size()) != want)
    throw InputError(fmt::format("{}: {} has {} values, the model needs {} (scores from another model?)", source,
                                 what, v.size(), want));
}

// Per-layer vectors -> one vector whose top-k sum is the mean over layers of
// each layer's normalised top-k sum (see to_search_importance).
std::vector<double> combine_layers(const std::vector<std::vector<float>>& per_layer) {
  std::vector<double> out;
  int64_t layers = 0;
  for (const auto& v : per_layer) {
    if (v.empty()) continue;
    std::vector<double> s(v.begin(), v.end());
    for (auto& x : s) x = std::max(x, 0.0);
    std::sort(s.begin(), s.end(), std::greater<double>());
    double total = 0;
    for (double x : s) total += x;
    if (out.empty()) out.assign(s.size(), 0.0);
    if (out.size() != s.size()) continue;  // validate() rejects this earlier
    for (std::size_t i = 0; i < s.size(); ++i) out[i] += total > 0 ? s[i] / total : 1.0 / s.size();
    ++layers;
  }
  for (auto& x : out) x /= std::max<int64_t>(layers, 1);
  return out;
}

}  // namespace

const std::vector<std::string>& layer_metric_names() {
  static const std::vector<std::string> names = {"mse", "kl", "loss", "bi"};
  return names;
}

std::string ImportanceScores::primary_layer_metric() const {
  for (const auto& m : layer_metric_names())
    if (layer.count(m)) return m;
  return "";
}

void ImportanceScores::validate(const ModelConfig& c, const std::string& source) const {
  if (!config_hash.empty() && config_hash != config_fingerprint(c))
    throw InputError(fmt::format("{}: the scores were measured on another model (config hash {} != {})", source,
                                 config_hash, config_fingerprint(c)));
  const int64_t n = c.num_layers();
  if (layer.empty()) throw InputError(fmt::format("{}: no layer scores (layer.mse/kl/loss/bi)", source));
  for (const auto& [metric, v] : layer) check_length(v, n, "layer." + metric, source);
  check_length(hidden, c.hidden_size, "hidden", source);
  auto per_layer = [&](const std::vector<std::vector<float>>& v, const char* axis, LayerType type, int64_t len) {
    if (static_cast<int64_t>(v.size()) != n)
      throw InputError(fmt::format("{}: {} scores cover {} layers, the model has {}", source, axis, v.size(), n));
    for (int64_t i = 0; i < n; ++i) {
      if (c.layer_type(i) == type)
        check_length(v[i], len, layer_key(i, axis), source);
      else if (!v[i].empty())
        throw InputError(fmt::format("{}: {} exists but layer {} is not of that type", source, layer_key(i, axis), i));
    }
  };
  const auto vectors = per_layer_vectors(*this);
  for (size_t a = 0; a < vectors.size(); ++a) {
    const PerLayerAxis& axis = per_layer_axes()[a];
    per_layer(*vectors[a], axis.name, axis.type, axis.length ? c.*axis.length : (c.*axis.derived)());
  }
}

SearchImportance ImportanceScores::to_search_importance(const ModelConfig& c) const {
  validate(c, "scores");
  SearchImportance s;
  const auto& primary = layer.at(primary_layer_metric());
  s.layer.assign(primary.begin(), primary.end());
  s.hidden.assign(hidden.begin(), hidden.end());
  s.ffn = combine_layers(ffn);
  s.attention_heads.clear();
  // Heads are grouped (per kv head / per Mamba group): combining sorted
  // vectors would lose the grouping, so sum the layers' normalised scores
  // head by head instead.
  auto sum_normalised = [](const std::vector<std::vector<float>>& per_layer) {
    std::vector<double> out;
    for (const auto& v : per_layer) {
      if (v.empty()) continue;
      double total = 0;
      for (float x : v) total += std::max(0.0f, x);
      if (out.empty()) out.assign(v.size(), 0.0);
      for (std::size_t i = 0; i < v.size(); ++i) out[i] += total > 0 ? std::max(0.0f, v[i]) / total : 0.0;
    }
    return out;
  };
  s.attention_heads = sum_normalised(attention_heads);
  s.mamba_heads = sum_normalised(mamba_heads);
  s.mamba_head_channels = combine_layers(mamba_head_channels);
  // Experts are grouped by the router (n_group): summed expert by expert,
  // as heads; the neuron widths are shared by every expert, as FFN. The
  // experts are scored as prune ranks them (expert_ranking.h), so the proxy
  // sees the share of the score the pruned model keeps.
  std::vector<std::vector<float>> experts(moe_experts.size());
  for (size_t i = 0; i < moe_experts.size(); ++i)
    experts[i] = expert_ranking_scores(*this, static_cast<int64_t>(i), kDefaultExpertRanking);
  s.moe_experts = sum_normalised(experts);
  s.moe_expert_neurons = combine_layers(moe_expert_neurons);
  s.moe_shared_neurons = combine_layers(moe_shared_neurons);
  return s;
}

std::string config_fingerprint(const ModelConfig& c) {
  Fnv64 h;
  h.add(architecture_json(c).dump());
  return h.hex();
}

CheckpointFingerprint checkpoint_fingerprint(const fs::path& dir) {
  CheckpointFingerprint fp;
  fp.config_hash = config_fingerprint(ModelConfig::load(dir));
  bool has_weights = false;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors") has_weights = true;
  if (!has_weights) return fp;
  CheckpointFiles files = CheckpointFiles::open(dir);
  Fnv64 h;
  constexpr uint64_t kSample = 4096;  // bytes hashed at each end of every tensor
  for (const auto& name : files.names()) {
    const auto* e = files.find(name);
    const TensorInfo& t = *e->info;
    h.add(name);
    h.add(dtype_name(t.dtype));
    for (int64_t d : t.shape) h.add(&d, sizeof d);
    const uint8_t* p = e->file->data(t);
    const uint64_t n = t.nbytes();
    h.add(p, std::min(n, kSample));
    if (n > kSample) h.add(p + n - std::min(n - kSample, kSample), std::min(n - kSample, kSample));
  }
  fp.weights_hash = h.hex();
  return fp;
}

LayerRanks layer_ranks(const ImportanceScores& s, const ModelConfig& c) {
  LayerRanks ranks;
  for (const auto& [metric, values] : s.layer) {
    const std::vector<float>& v = values;  // C++17 lambdas cannot capture a structured binding (clang)
    std::vector<int64_t> order(v.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
    auto& all = ranks.overall[metric];
    auto& typed = ranks.within_type[metric];
    all.assign(v.size(), 0);
    typed.assign(v.size(), 0);
    std::map<char, int64_t> seen;
    for (std::size_t r = 0; r < order.size(); ++r) {
      all[order[r]] = static_cast<int64_t>(r) + 1;
      typed[order[r]] = ++seen[c.pattern[order[r]]];
    }
  }
  return ranks;
}

void save_importance(const ImportanceScores& s, const ModelConfig& c, const fs::path& dir) {
  s.validate(c, "scores");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw InputError(fmt::format("cannot create {}: {}", dir.string(), ec.message()));

  std::vector<TensorView> views;
  auto add = [&](const std::string& name, const std::vector<float>& v) {
    if (v.empty()) return;
    views.push_back({name, DType::F32, {static_cast<int64_t>(v.size())}, v.data(), v.size() * sizeof(float)});
  };
  for (const auto& [metric, v] : s.layer) add("layer." + metric, v);
  add("hidden", s.hidden);
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    const auto vectors = per_layer_vectors(s);
    for (size_t a = 0; a < vectors.size(); ++a) add(layer_key(i, per_layer_axes()[a].name), (*vectors[a])[i]);
  }
  write_safetensors(dir / "importance.safetensors", views,
                    {{"format", kFormat}, {"config_hash", s.config_hash}, {"weights_hash", s.weights_hash}});

  // The JSON view: a per-layer table with ranks, for people and scripts.
  json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["config_hash"] = s.config_hash;
  j["weights_hash"] = s.weights_hash;
  j["primary_layer_metric"] = s.primary_layer_metric();
  json prov = json::parse(s.provenance_json, nullptr, false);
  j["measured"] = prov.is_discarded() ? json::object() : prov;
  j["config"] = c.to_json();
  const LayerRanks ranks = layer_ranks(s, c);
  auto& rank_all = ranks.overall;
  auto& rank_type = ranks.within_type;
  json layers = json::array();
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    json row = {{"layer", i}, {"type", std::string(1, c.pattern[i])}};
    for (const auto& [metric, v] : s.layer) {
      row[metric] = v[i];
      row["rank_" + metric] = rank_all.at(metric)[i];
      row["rank_in_type_" + metric] = rank_type.at(metric)[i];
    }
    layers.push_back(row);
  }
  j["layers"] = layers;
  write_file_atomic(dir / "importance.json", j.dump(2) + "\n");
}

ImportanceScores load_importance(const fs::path& dir) {
  const fs::path st = dir / "importance.safetensors";
  const fs::path js = dir / "importance.json";
  if (!fs::is_directory(dir)) throw InputError(fmt::format("scores directory {} does not exist", dir.string()));
  if (!fs::exists(st) || !fs::exists(js))
    throw InputError(fmt::format("{}: expected importance.safetensors and importance.json (written by "
                                 "`minipuzzle score`)",
                                 dir.string()));
  // Depth-limited parse; every key's type is checked before use (json::value
  // would throw type_error, not InputError, on a key of the wrong type).
  const json j = parse_json_lenient(read_file(js), js.string());
  if (!j.is_object() || !j.contains("format") || j["format"] != kFormat)
    throw InputError(fmt::format("{}: not a minipuzzle importance file", js.string()));
  if (!j.contains("version") || j["version"] != kVersion)
    throw InputError(fmt::format("{}: unsupported version {}", js.string(), j.contains("version") ? j["version"].dump() : "(none)"));
  for (const char* key : {"config_hash", "weights_hash"})
    if (j.contains(key) && !j[key].is_string())
      throw InputError(fmt::format("{}: key '{}' must be a string", js.string(), key));
  if (!j.contains("config") || !j["config"].is_object())
    throw InputError(fmt::format("{}: missing key 'config'", js.string()));
  const ModelConfig c = ModelConfig::from_json(j["config"], js.string());

  auto file = SafetensorsFile::open(st);
  ImportanceScores s;
  auto meta = file->metadata();
  if (meta["format"] != kFormat) throw InputError(fmt::format("{}: not a minipuzzle importance file", st.string()));
  s.config_hash = meta["config_hash"];
  s.weights_hash = meta["weights_hash"];
  if (s.config_hash != j.value("config_hash", "") || s.weights_hash != j.value("weights_hash", ""))
    throw InputError(fmt::format("{}: importance.json and importance.safetensors disagree on the model hash",
                                 dir.string()));
  if (s.config_hash != config_fingerprint(c))
    throw InputError(fmt::format("{}: config_hash does not match the config recorded in importance.json",
                                 js.string()));
  s.provenance_json = j.value("measured", json::object()).dump();

  auto read = [&](const std::string& name) -> std::vector<float> {
    const TensorInfo* t = file->find(name);
    if (!t) return {};
    if (t->dtype != DType::F32 || t->shape.size() != 1)
      throw InputError(fmt::format("{}: tensor {} must be a 1-D F32 vector", st.string(), name));
    std::vector<float> v(static_cast<std::size_t>(t->numel()));
    std::memcpy(v.data(), file->data(*t), t->nbytes());
    for (float x : v)
      if (!std::isfinite(x)) throw InputError(fmt::format("{}: tensor {} holds NaN or infinity", st.string(), name));
    return v;
  };
  for (const auto& m : layer_metric_names()) {
    auto v = read("layer." + m);
    if (!v.empty()) s.layer[m] = std::move(v);
  }
  s.hidden = read("hidden");
  const int64_t n = c.num_layers();
  const auto vectors = per_layer_vectors(s);
  for (auto* v : vectors) v->assign(n, {});
  for (int64_t i = 0; i < n; ++i)
    for (size_t a = 0; a < vectors.size(); ++a) (*vectors[a])[i] = read(layer_key(i, per_layer_axes()[a].name));
  // Every tensor must be one we know: a stray name means a format we do not read.
  std::size_t known = s.layer.size() + (s.hidden.empty() ? 0 : 1);
  for (int64_t i = 0; i < n; ++i)
    for (auto* v : vectors) known += (*v)[i].empty() ? 0 : 1;
  if (known != file->tensors().size())
    throw InputError(fmt::format("{}: holds tensors this version does not know", st.string()));
  s.validate(c, dir.string());
  return s;
}

ImportanceScores load_importance_for(const fs::path& scores_dir, const fs::path& model_dir) {
  ImportanceScores s = load_importance(scores_dir);
  const CheckpointFingerprint fp = checkpoint_fingerprint(model_dir);
  if (s.config_hash != fp.config_hash)
    throw InputError(fmt::format("{} was scored on another model than {} (config hash {} != {})",
                                 scores_dir.string(), model_dir.string(), s.config_hash, fp.config_hash));
  if (!s.weights_hash.empty() && !fp.weights_hash.empty() && s.weights_hash != fp.weights_hash)
    throw InputError(fmt::format("{} was scored on other weights than those in {} (weights hash {} != {})",
                                 scores_dir.string(), model_dir.string(), s.weights_hash, fp.weights_hash));
  return s;
}

}  // namespace minipuzzle
