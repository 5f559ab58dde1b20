#include "minipuzzle/prune_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "minipuzzle/errors.h"
#include "minipuzzle/expert_ranking.h"

namespace minipuzzle {

namespace {

const LayerType kTypes[4] = {LayerType::Mamba, LayerType::Attention, LayerType::Mlp, LayerType::Moe};

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t{0});
  return v;
}

std::string restricted_pattern(const ModelConfig& parent, const std::vector<int64_t>& layers) {
  std::string p;
  for (int64_t i : layers) p.push_back(parent.pattern.at(static_cast<size_t>(i)));
  return p;
}

// NaN ranks below everything, so a broken score never wins a tie.
double rank_key(float x) { return std::isnan(x) ? -std::numeric_limits<double>::infinity() : x; }

// Indices into `scores` [begin, begin + n): the k best (ties: lower index),
// returned ascending.
std::vector<int64_t> top_k_range(const std::vector<float>& scores, int64_t begin, int64_t n, int64_t k) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), begin);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return rank_key(scores[static_cast<size_t>(a)]) > rank_key(scores[static_cast<size_t>(b)]);
  });
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// The k best of n units (each of `groups` equal consecutive groups keeps its
// best k/groups). An axis kept whole needs no scores.
std::vector<int64_t> top_k(const std::vector<float>* scores, int64_t n, int64_t k, int64_t groups,
                           const std::string& what) {
  if (k == n) return iota(n);
  if (k < 1 || k > n) throw InputError(fmt::format("{}: cannot keep {} of {}", what, k, n));
  if (!scores || scores->empty())
    throw InputError(fmt::format("{}: narrowing {} -> {} needs importance scores, and the scores have none for it "
                                 "(pass --scores from `minipuzzle score`)",
                                 what, n, k));
  if (static_cast<int64_t>(scores->size()) != n)
    throw InputError(fmt::format("{}: the scores have {} values, the parent has {} (scores of another model?)", what,
                                 scores->size(), n));
  if (n % groups != 0 || k % groups != 0)
    throw InputError(fmt::format("{}: {} and {} must be multiples of the {} groups", what, n, k, groups));
  std::vector<int64_t> out;
  const int64_t per = n / groups, keep = k / groups;
  for (int64_t g = 0; g < groups; ++g) {
    auto part = top_k_range(*scores, g * per, per, keep);
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

const std::vector<float>* layer_axis(const std::vector<std::vector<float>>& v, int64_t layer) {
  return layer >= 0 && layer < static_cast<int64_t>(v.size()) ? &v[static_cast<size_t>(layer)] : nullptr;
}

// The layer scores that rank layers, checked against the parent.
const std::vector<float>& layer_ranking(const ModelConfig& parent, const ImportanceScores& s, const std::string& why) {
  const std::string metric = s.layer.empty() ? std::string() : s.primary_layer_metric();
  auto it = s.layer.find(metric);
  if (metric.empty() || it == s.layer.end())
    throw InputError(why + " needs layer importance scores, and the scores have none (pass --scores from "
                           "`minipuzzle score`)");
  if (static_cast<int64_t>(it->second.size()) != parent.num_layers())
    throw InputError(fmt::format("layer scores ({}) have {} values, the parent has {} layers (scores of another "
                                 "model?)",
                                 metric, it->second.size(), parent.num_layers()));
  return it->second;
}

// The `n` best layers of `type` among `candidates` (ascending parent indices).
std::vector<int64_t> best_layers(const ModelConfig& parent, const ImportanceScores& s, LayerType type, int64_t n,
                                 const std::vector<int64_t>& candidates, const std::string& why) {
  std::vector<int64_t> of_type;
  for (int64_t i : candidates)
    if (parent.layer_type(i) == type) of_type.push_back(i);
  if (n > static_cast<int64_t>(of_type.size()))
    throw InputError(fmt::format("{}: cannot keep {} {} layers, only {} are available", why, n,
                                 layer_type_name(type), of_type.size()));
  if (n == static_cast<int64_t>(of_type.size())) return of_type;
  const auto& score = layer_ranking(parent, s, why);
  std::stable_sort(of_type.begin(), of_type.end(), [&](int64_t a, int64_t b) {
    return rank_key(score[static_cast<size_t>(a)]) > rank_key(score[static_cast<size_t>(b)]);
  });
  of_type.resize(static_cast<size_t>(n));
  std::sort(of_type.begin(), of_type.end());
  return of_type;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

[[noreturn]] void plan_error(const std::string& msg) { throw InputError("prune plan: " + msg); }

// A list of distinct indices in [0, n), ascending, of size `want`.
void check_list(const std::vector<int64_t>& v, int64_t n, int64_t want, const std::string& what) {
  if (static_cast<int64_t>(v.size()) != want)
    plan_error(fmt::format("{} keeps {} entries, the target needs {}", what, v.size(), want));
  for (size_t j = 0; j < v.size(); ++j) {
    if (v[j] < 0 || v[j] >= n) plan_error(fmt::format("{}: index {} is outside [0, {})", what, v[j], n));
    if (j > 0 && v[j] <= v[j - 1])
      plan_error(fmt::format("{}: indices must be ascending and distinct ({} after {})", what, v[j], v[j - 1]));
  }
}

// Every one of `groups` consecutive groups of n/groups units keeps the same count.
void check_even_groups(const std::vector<int64_t>& v, int64_t n, int64_t groups, const std::string& what,
                       const char* units = "heads") {
  std::vector<int64_t> count(static_cast<size_t>(groups), 0);
  for (int64_t i : v) count[static_cast<size_t>(i / (n / groups))]++;
  for (int64_t g = 0; g < groups; ++g)
    if (count[static_cast<size_t>(g)] != count[0])
      plan_error(fmt::format("{}: group {} keeps {} {}, group 0 keeps {}; every group must keep the same number",
                             what, g, count[static_cast<size_t>(g)], units, count[0]));
}

// The routed experts a target may keep: a multiple of n_group (every router
// group keeps the same number), at least num_experts_per_tok.
void check_expert_count(const ModelConfig& parent, int64_t experts, const std::string& what) {
  if (experts % parent.n_group != 0)
    throw InputError(fmt::format("{}: {} routed experts is not a multiple of n_group ({}); every router group must "
                                 "keep the same number of experts",
                                 what, experts, parent.n_group));
  if (experts < parent.num_experts_per_tok)
    throw InputError(fmt::format("{}: {} routed experts is fewer than num_experts_per_tok ({}), the experts each "
                                 "token uses",
                                 what, experts, parent.num_experts_per_tok));
}

}  // namespace

PrunePlan PrunePlan::identity(const ModelConfig& parent) {
  PrunePlan p;
  p.target = parent;
  p.kept_layers = iota(parent.num_layers());
  p.hidden = iota(parent.hidden_size);
  const size_t n = static_cast<size_t>(parent.num_layers());
  p.ffn.assign(n, {});
  p.attention_heads.assign(n, {});
  p.mamba_heads.assign(n, {});
  p.mamba_head_channels.assign(n, {});
  p.moe_experts.assign(n, {});
  p.moe_expert_neurons.assign(n, {});
  p.moe_shared_neurons.assign(n, {});
  for (int64_t i = 0; i < parent.num_layers(); ++i) {
    switch (parent.layer_type(i)) {
      case LayerType::Mlp: p.ffn[i] = iota(parent.intermediate_size); break;
      case LayerType::Attention: p.attention_heads[i] = iota(parent.num_attention_heads); break;
      case LayerType::Mamba:
        p.mamba_heads[i] = iota(parent.mamba_num_heads);
        p.mamba_head_channels[i] = iota(parent.mamba_head_dim);
        break;
      case LayerType::Moe:
        p.moe_experts[i] = iota(parent.n_routed_experts);
        p.moe_expert_neurons[i] = iota(parent.moe_intermediate_size);
        p.moe_shared_neurons[i] = iota(parent.moe_shared_expert_intermediate_size);
        break;
    }
  }
  return p;
}

void PrunePlan::validate(const ModelConfig& parent) const {
  const ModelConfig& t = target;
  t.validate("pruned config");
  // Keys pruning never changes.
  auto same = [&](bool equal, const char* key) {
    if (!equal) plan_error(fmt::format("the target config changes {}, which pruning keeps", key));
  };
  same(t.vocab_size == parent.vocab_size, "vocab_size");
  same(t.layer_norm_epsilon == parent.layer_norm_epsilon, "layer_norm_epsilon");
  same(t.tie_word_embeddings == parent.tie_word_embeddings, "tie_word_embeddings");
  if (t.count(LayerType::Attention) > 0) {
    same(t.num_key_value_heads == parent.num_key_value_heads, "num_key_value_heads");
    same(t.head_dim == parent.head_dim, "head_dim");
    same(t.attention_bias == parent.attention_bias, "attention_bias");
  }
  if (t.count(LayerType::Mlp) > 0) same(t.mlp_bias == parent.mlp_bias, "mlp_bias");
  if (t.count(LayerType::Mamba) > 0) {
    same(t.ssm_state_size == parent.ssm_state_size, "ssm_state_size");
    same(t.n_groups == parent.n_groups, "n_groups");
    same(t.conv_kernel == parent.conv_kernel, "conv_kernel");
    same(t.chunk_size == parent.chunk_size, "chunk_size");
    same(t.time_step_min == parent.time_step_min, "time_step_min");
    same(t.use_conv_bias == parent.use_conv_bias, "use_conv_bias");
    same(t.mamba_proj_bias == parent.mamba_proj_bias, "mamba_proj_bias");
  }
  if (t.count(LayerType::Moe) > 0) {
    same(t.n_group == parent.n_group, "n_group");
    same(t.topk_group == parent.topk_group, "topk_group");
    same(t.num_experts_per_tok == parent.num_experts_per_tok, "num_experts_per_tok");
    same(t.moe_latent_size == parent.moe_latent_size, "moe_latent_size");
    same(t.norm_topk_prob == parent.norm_topk_prob, "norm_topk_prob");
    same(t.routed_scaling_factor == parent.routed_scaling_factor, "routed_scaling_factor");
    check_expert_count(parent, t.n_routed_experts, "prune plan");
  }

  // Layers.
  if (kept_layers.empty()) plan_error("no layer is kept");
  check_list(kept_layers, parent.num_layers(), t.num_layers(), "kept_layers");
  if (restricted_pattern(parent, kept_layers) != t.pattern)
    plan_error(fmt::format("the target pattern {} is not the parent pattern {} restricted to layers {} ({})", t.pattern,
                           parent.pattern, join(kept_layers), restricted_pattern(parent, kept_layers)));

  // Widths.
  if (t.hidden_size > parent.hidden_size)
    plan_error(fmt::format("target hidden_size {} is larger than the parent's {}", t.hidden_size, parent.hidden_size));
  check_list(hidden, parent.hidden_size, t.hidden_size, "hidden channels");
  const int64_t n = parent.num_layers();
  for (const auto* v :
       {&ffn, &attention_heads, &mamba_heads, &mamba_head_channels, &moe_experts, &moe_expert_neurons, &moe_shared_neurons})
    if (static_cast<int64_t>(v->size()) != n)
      plan_error(fmt::format("per-layer lists cover {} layers, the parent has {}", v->size(), n));
  std::vector<bool> kept(static_cast<size_t>(n), false);
  for (int64_t i : kept_layers) kept[static_cast<size_t>(i)] = true;
  for (int64_t i = 0; i < n; ++i) {
    const LayerType type = parent.layer_type(i);
    const bool k = kept[static_cast<size_t>(i)];
    auto must_be_empty = [&](const std::vector<std::vector<int64_t>>& v, bool applies, const char* what) {
      if (!(k && applies) && !v[static_cast<size_t>(i)].empty())
        plan_error(fmt::format("layer {} ({}{}) has a {} list", i, layer_type_name(type), k ? "" : ", dropped", what));
    };
    must_be_empty(ffn, type == LayerType::Mlp, "ffn");
    must_be_empty(attention_heads, type == LayerType::Attention, "attention head");
    must_be_empty(mamba_heads, type == LayerType::Mamba, "mamba head");
    must_be_empty(mamba_head_channels, type == LayerType::Mamba, "mamba head channel");
    must_be_empty(moe_experts, type == LayerType::Moe, "moe expert");
    must_be_empty(moe_expert_neurons, type == LayerType::Moe, "moe expert neuron");
    must_be_empty(moe_shared_neurons, type == LayerType::Moe, "moe shared-expert neuron");
    if (!k) continue;
    const std::string where = fmt::format("layer {} ({})", i, layer_type_name(type));
    switch (type) {
      case LayerType::Mlp:
        if (t.intermediate_size > parent.intermediate_size)
          plan_error(fmt::format("target intermediate_size {} is larger than the parent's {}", t.intermediate_size,
                                 parent.intermediate_size));
        check_list(ffn[i], parent.intermediate_size, t.intermediate_size, where + " ffn neurons");
        break;
      case LayerType::Attention:
        if (t.num_attention_heads > parent.num_attention_heads)
          plan_error(fmt::format("target num_attention_heads {} is larger than the parent's {}",
                                 t.num_attention_heads, parent.num_attention_heads));
        check_list(attention_heads[i], parent.num_attention_heads, t.num_attention_heads, where + " attention heads");
        check_even_groups(attention_heads[i], parent.num_attention_heads, parent.num_key_value_heads,
                          where + " attention heads (per kv head)");
        break;
      case LayerType::Mamba:
        if (t.mamba_num_heads > parent.mamba_num_heads || t.mamba_head_dim > parent.mamba_head_dim)
          plan_error(fmt::format("target Mamba heads x head_dim {}x{} exceed the parent's {}x{}", t.mamba_num_heads,
                                 t.mamba_head_dim, parent.mamba_num_heads, parent.mamba_head_dim));
        check_list(mamba_heads[i], parent.mamba_num_heads, t.mamba_num_heads, where + " mamba heads");
        check_even_groups(mamba_heads[i], parent.mamba_num_heads, parent.n_groups, where + " mamba heads (per group)");
        check_list(mamba_head_channels[i], parent.mamba_head_dim, t.mamba_head_dim, where + " mamba head channels");
        break;
      case LayerType::Moe:
        if (t.n_routed_experts > parent.n_routed_experts || t.moe_intermediate_size > parent.moe_intermediate_size ||
            t.moe_shared_expert_intermediate_size > parent.moe_shared_expert_intermediate_size)
          plan_error(fmt::format("target experts x expert width / shared width {}x{} / {} exceed the parent's {}x{} / {}",
                                 t.n_routed_experts, t.moe_intermediate_size, t.moe_shared_expert_intermediate_size,
                                 parent.n_routed_experts, parent.moe_intermediate_size,
                                 parent.moe_shared_expert_intermediate_size));
        check_list(moe_experts[i], parent.n_routed_experts, t.n_routed_experts, where + " routed experts");
        check_even_groups(moe_experts[i], parent.n_routed_experts, parent.n_group,
                          where + " routed experts (per router group)", "experts");
        check_list(moe_expert_neurons[i], parent.moe_intermediate_size, t.moe_intermediate_size,
                   where + " expert neurons");
        check_list(moe_shared_neurons[i], parent.moe_shared_expert_intermediate_size,
                   t.moe_shared_expert_intermediate_size, where + " shared-expert neurons");
        break;
    }
  }
}

std::string PrunePlan::summary(const ModelConfig& parent) const {
  std::vector<std::string> parts;
  parts.push_back(parent.pattern == target.pattern ? fmt::format("layers {} kept", parent.pattern)
                                                   : fmt::format("layers {} -> {}", parent.pattern, target.pattern));
  auto width = [&](const char* name, int64_t a, int64_t b, bool used) {
    if (used && a != b) parts.push_back(fmt::format("{} {} -> {}", name, a, b));
  };
  width("hidden", parent.hidden_size, target.hidden_size, true);
  width("ffn", parent.intermediate_size, target.intermediate_size, target.count(LayerType::Mlp) > 0);
  width("attention heads", parent.num_attention_heads, target.num_attention_heads,
        target.count(LayerType::Attention) > 0);
  width("mamba heads", parent.mamba_num_heads, target.mamba_num_heads, target.count(LayerType::Mamba) > 0);
  width("mamba head_dim", parent.mamba_head_dim, target.mamba_head_dim, target.count(LayerType::Mamba) > 0);
  const bool moe = target.count(LayerType::Moe) > 0;
  width("routed experts", parent.n_routed_experts, target.n_routed_experts, moe);
  width("expert ffn", parent.moe_intermediate_size, target.moe_intermediate_size, moe);
  width("shared expert ffn", parent.moe_shared_expert_intermediate_size, target.moe_shared_expert_intermediate_size,
        moe);
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? "; " : "") + parts[i];
  return s;
}

PrunePlan plan_from_scores(const ModelConfig& parent, const ImportanceScores& s, const ModelConfig& target,
                           std::vector<int64_t> kept_layers, ExpertRanking expert_ranking) {
  target.validate("pruned config");
  if (kept_layers.empty()) {
    for (LayerType type : kTypes) {
      auto best = best_layers(parent, s, type, target.count(type), iota(parent.num_layers()),
                              fmt::format("keeping {} of the parent's {} {} layers", target.count(type),
                                          parent.count(type), layer_type_name(type)));
      kept_layers.insert(kept_layers.end(), best.begin(), best.end());
    }
    std::sort(kept_layers.begin(), kept_layers.end());
    const std::string got = restricted_pattern(parent, kept_layers);
    if (got != target.pattern)
      throw InputError(fmt::format("the target pattern {} is not the parent pattern {} restricted to its best layers "
                                   "of each type ({}: layers {})",
                                   target.pattern, parent.pattern, got, join(kept_layers)));
  }

  PrunePlan p;
  p.target = target;
  p.kept_layers = kept_layers;
  // Index problems in kept_layers are reported by validate() below; check
  // the range here so the slicing code never reads outside the parent.
  for (int64_t i : kept_layers)
    if (i < 0 || i >= parent.num_layers())
      throw InputError(fmt::format("kept layer {} is outside the parent's {} layers", i, parent.num_layers()));
  const size_t n = static_cast<size_t>(parent.num_layers());
  p.ffn.assign(n, {});
  p.attention_heads.assign(n, {});
  p.mamba_heads.assign(n, {});
  p.mamba_head_channels.assign(n, {});
  p.moe_experts.assign(n, {});
  p.moe_expert_neurons.assign(n, {});
  p.moe_shared_neurons.assign(n, {});

  auto size_check = [&](int64_t want, int64_t have, const char* key) {
    if (want > have) throw InputError(fmt::format("target {} {} is larger than the parent's {}", key, want, have));
  };
  size_check(target.hidden_size, parent.hidden_size, "hidden_size");
  p.hidden = top_k(&s.hidden, parent.hidden_size, target.hidden_size, 1, "hidden channels");
  for (int64_t i : kept_layers) {
    const std::string where = fmt::format("layer {} ({})", i, layer_type_name(parent.layer_type(i)));
    switch (parent.layer_type(i)) {
      case LayerType::Mlp:
        size_check(target.intermediate_size, parent.intermediate_size, "intermediate_size");
        p.ffn[i] = top_k(layer_axis(s.ffn, i), parent.intermediate_size, target.intermediate_size, 1,
                         where + " ffn neurons");
        break;
      case LayerType::Attention:
        size_check(target.num_attention_heads, parent.num_attention_heads, "num_attention_heads");
        p.attention_heads[i] = top_k(layer_axis(s.attention_heads, i), parent.num_attention_heads,
                                     target.num_attention_heads, parent.num_key_value_heads, where + " attention heads");
        break;
      case LayerType::Mamba:
        size_check(target.mamba_num_heads, parent.mamba_num_heads, "mamba_num_heads");
        size_check(target.mamba_head_dim, parent.mamba_head_dim, "mamba_head_dim");
        p.mamba_heads[i] = top_k(layer_axis(s.mamba_heads, i), parent.mamba_num_heads, target.mamba_num_heads,
                                 parent.n_groups, where + " mamba heads");
        p.mamba_head_channels[i] = top_k(layer_axis(s.mamba_head_channels, i), parent.mamba_head_dim,
                                         target.mamba_head_dim, 1, where + " mamba head channels");
        break;
      case LayerType::Moe:
        size_check(target.n_routed_experts, parent.n_routed_experts, "n_routed_experts");
        size_check(target.moe_intermediate_size, parent.moe_intermediate_size, "moe_intermediate_size");
        size_check(target.moe_shared_expert_intermediate_size, parent.moe_shared_expert_intermediate_size,
                   "moe_shared_expert_intermediate_size");
        check_expert_count(parent, target.n_routed_experts, where);
        if (target.n_routed_experts < parent.n_routed_experts) {
          const auto ranked = expert_ranking_scores(s, i, expert_ranking);
          p.moe_experts[i] = top_k(&ranked, parent.n_routed_experts, target.n_routed_experts, parent.n_group,
                                   where + " routed experts");
        } else {
          p.moe_experts[i] = top_k(nullptr, parent.n_routed_experts, target.n_routed_experts, parent.n_group,
                                   where + " routed experts");
        }
        p.moe_expert_neurons[i] = top_k(layer_axis(s.moe_expert_neurons, i), parent.moe_intermediate_size,
                                        target.moe_intermediate_size, 1, where + " expert neurons");
        p.moe_shared_neurons[i] =
            top_k(layer_axis(s.moe_shared_neurons, i), parent.moe_shared_expert_intermediate_size,
                  target.moe_shared_expert_intermediate_size, 1, where + " shared-expert neurons");
        break;
    }
  }
  p.validate(parent);
  return p;
}

PrunePlan plan_from_set(const ModelConfig& parent, const ImportanceScores& s, const std::vector<std::string>& sets,
                        ExpertRanking expert_ranking) {
  static const std::set<std::string> kKeys = {"hidden_size",      "intermediate_size",
                                              "num_attention_heads", "mamba_num_heads",
                                              "mamba_head_dim",   "n_routed_experts",
                                              "moe_intermediate_size", "moe_shared_expert_intermediate_size",
                                              "drop_layers",      "keep_mamba",
                                              "keep_attention",   "keep_mlp",
                                              "keep_moe"};
  if (sets.empty()) throw InputError("--set: give at least one key=value");
  std::map<std::string, std::string> kv;
  for (const auto& item : sets) {
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw InputError(fmt::format("--set {}: expected key=value", item));
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (!kKeys.count(key))
      throw InputError(fmt::format("--set {}: unknown key '{}'; expected one of hidden_size, intermediate_size, "
                                   "num_attention_heads, mamba_num_heads, mamba_head_dim, n_routed_experts, "
                                   "moe_intermediate_size, moe_shared_expert_intermediate_size, drop_layers, "
                                   "keep_mamba, keep_attention, keep_mlp, keep_moe",
                                   item, key));
    if (kv.count(key)) throw InputError(fmt::format("--set {}: key '{}' is given twice", item, key));
    kv[key] = value;
  }
  auto number = [&](const std::string& key, const std::string& text) -> int64_t {
    int64_t v = 0;
    const char* b = text.data();
    const char* e = b + text.size();
    auto r = std::from_chars(b, e, v);
    if (text.empty() || r.ec != std::errc() || r.ptr != e || v < 0)
      throw InputError(fmt::format("--set {}={}: '{}' is not a non-negative integer", key, kv.at(key), text));
    return v;
  };

  ModelConfig target = parent;
  auto width = [&](const char* key, int64_t& field, LayerType needs, int64_t multiple_of, const char* multiple_name) {
    auto it = kv.find(key);
    if (it == kv.end()) return;
    const int64_t v = number(key, it->second);
    if (parent.count(needs) == 0)
      throw InputError(fmt::format("--set {}={}: the parent has no {} layers", key, it->second, layer_type_name(needs)));
    if (v < 1) throw InputError(fmt::format("--set {}={}: must be at least 1 (nothing would be left)", key, it->second));
    if (v > field)
      throw InputError(fmt::format("--set {}={}: larger than the parent's {} ({}); pruning only shrinks", key,
                                   it->second, key, field));
    if (multiple_of > 1 && v % multiple_of != 0)
      throw InputError(fmt::format("--set {}={}: must be a multiple of {} ({}) so every group keeps the same number",
                                   key, it->second, multiple_name, multiple_of));
    field = v;
  };
  if (auto it = kv.find("hidden_size"); it != kv.end()) {
    const int64_t v = number("hidden_size", it->second);
    if (v < 1) throw InputError(fmt::format("--set hidden_size={}: must be at least 1 (nothing would be left)", v));
    if (v > parent.hidden_size)
      throw InputError(fmt::format("--set hidden_size={}: larger than the parent's hidden_size ({}); pruning only "
                                   "shrinks",
                                   v, parent.hidden_size));
    target.hidden_size = v;
  }
  width("intermediate_size", target.intermediate_size, LayerType::Mlp, 1, "");
  width("num_attention_heads", target.num_attention_heads, LayerType::Attention, parent.num_key_value_heads,
        "num_key_value_heads");
  width("mamba_num_heads", target.mamba_num_heads, LayerType::Mamba, parent.n_groups, "n_groups");
  width("mamba_head_dim", target.mamba_head_dim, LayerType::Mamba, 1, "");
  width("n_routed_experts", target.n_routed_experts, LayerType::Moe, 1, "");
  if (kv.count("n_routed_experts"))
    check_expert_count(parent, target.n_routed_experts, "--set n_routed_experts=" + kv.at("n_routed_experts"));
  width("moe_intermediate_size", target.moe_intermediate_size, LayerType::Moe, 1, "");
  width("moe_shared_expert_intermediate_size", target.moe_shared_expert_intermediate_size, LayerType::Moe, 1, "");

  // Layers: drop the listed ones, then keep the best N of a type among the rest.
  std::vector<bool> dropped(static_cast<size_t>(parent.num_layers()), false);
  if (auto it = kv.find("drop_layers"); it != kv.end()) {
    const std::string& list = it->second;
    if (list.empty()) throw InputError("--set drop_layers=: expected a comma list of layer indices, e.g. 3,7");
    size_t start = 0;
    while (start <= list.size()) {
      size_t comma = list.find(',', start);
      if (comma == std::string::npos) comma = list.size();
      const int64_t i = number("drop_layers", list.substr(start, comma - start));
      if (i >= parent.num_layers())
        throw InputError(fmt::format("--set drop_layers={}: layer {} does not exist (the parent has layers 0..{})",
                                     list, i, parent.num_layers() - 1));
      if (dropped[static_cast<size_t>(i)])
        throw InputError(fmt::format("--set drop_layers={}: layer {} is listed twice", list, i));
      dropped[static_cast<size_t>(i)] = true;
      start = comma + 1;
    }
  }
  std::vector<int64_t> candidates;
  for (int64_t i = 0; i < parent.num_layers(); ++i)
    if (!dropped[static_cast<size_t>(i)]) candidates.push_back(i);
  std::vector<int64_t> kept;
  for (LayerType type : kTypes) {
    const std::string key = std::string("keep_") + layer_type_name(type);
    int64_t available = 0;
    for (int64_t i : candidates) available += parent.layer_type(i) == type;
    int64_t want = available;
    if (auto it = kv.find(key); it != kv.end()) {
      want = number(key, it->second);
      if (want > available)
        throw InputError(fmt::format("--set {}={}: only {} {} layers are {}", key, it->second, available,
                                     layer_type_name(type), available == parent.count(type) ? "in the parent" : "left after drop_layers"));
    }
    auto best = best_layers(parent, s, type, want, candidates, "--set " + key + "=" + std::to_string(want));
    kept.insert(kept.end(), best.begin(), best.end());
  }
  std::sort(kept.begin(), kept.end());
  if (kept.empty()) throw InputError("--set: no layer would be left; keep at least one");
  target.pattern = restricted_pattern(parent, kept);
  return plan_from_scores(parent, s, target, kept, expert_ranking);
}

}  // namespace minipuzzle
