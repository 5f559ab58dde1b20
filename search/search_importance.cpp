#include "minipuzzle/search_importance.h"

#include <algorithm>
#include <functional>

#include "minipuzzle/errors.h"

namespace minipuzzle {

void SearchImportance::validate(const ModelConfig& parent, const std::string& source) const {
  auto check = [&](const std::vector<double>& v, int64_t expected, const char* name, bool required) {
    if (v.empty() && !required) return;
    if (static_cast<int64_t>(v.size()) != expected)
      throw InputError(source + ": " + name + " has " + std::to_string(v.size()) + " scores but the model has " +
                       std::to_string(expected) + "; are these scores from another model?");
  };
  check(layer, parent.num_layers(), "layer importance", true);
  check(ffn, parent.intermediate_size, "FFN channel importance", false);
  check(hidden, parent.hidden_size, "hidden channel importance", false);
  check(mamba_heads, parent.mamba_num_heads, "Mamba head importance", false);
  check(mamba_head_channels, parent.mamba_head_dim, "Mamba head-channel importance", false);
  check(attention_heads, parent.num_attention_heads, "attention head importance", false);
  check(moe_experts, parent.n_routed_experts, "MoE expert importance", false);
  check(moe_expert_neurons, parent.moe_intermediate_size, "MoE expert-neuron importance", false);
  check(moe_shared_neurons, parent.moe_shared_expert_intermediate_size, "MoE shared-expert neuron importance", false);
}

SearchImportance SearchImportance::uniform(const ModelConfig& parent) {
  SearchImportance s;
  s.layer.assign(static_cast<size_t>(parent.num_layers()), 1.0);
  return s;
}

SearchImportance SearchImportance::synthetic(const ModelConfig& parent, uint64_t seed) {
  // splitmix64: a fixed generator, so scores do not depend on the standard
  // library's distributions (which differ across implementations).
  uint64_t state = seed;
  auto next = [&]() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;  // [0, 1)
  };
  auto fill = [&](int64_t n) {
    std::vector<double> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
    for (double& x : v) x = 0.05 + next();
    return v;
  };
  SearchImportance s;
  s.layer = fill(parent.num_layers());
  s.ffn = fill(parent.intermediate_size);
  s.hidden = fill(parent.hidden_size);
  s.mamba_heads = fill(parent.mamba_num_heads);
  s.mamba_head_channels = fill(parent.mamba_head_dim);
  s.attention_heads = fill(parent.num_attention_heads);
  // Drawn last, so a dense model's synthetic scores are what they always were.
  if (parent.has_moe()) {
    s.moe_experts = fill(parent.n_routed_experts);
    s.moe_expert_neurons = fill(parent.moe_intermediate_size);
    s.moe_shared_neurons = fill(parent.moe_shared_expert_intermediate_size);
  }
  return s;
}

std::vector<double> kept_fractions(const std::vector<double>& scores, int64_t parent_size,
                                   const std::vector<int64_t>& kept, int64_t groups) {
  std::vector<double> out;
  if (parent_size <= 0) return std::vector<double>(kept.size(), 1.0);
  double total = 0;
  for (double x : scores) total += std::max(x, 0.0);
  const bool informative = !scores.empty() && total > 0;
  if (groups < 1 || parent_size % groups != 0) groups = 1;
  const int64_t per_group = parent_size / groups;
  // Each group's scores, best first: pruning keeps the same count per group.
  std::vector<std::vector<double>> sorted(informative ? static_cast<size_t>(groups) : 0);
  for (int64_t g = 0; g < static_cast<int64_t>(sorted.size()); ++g) {
    auto& v = sorted[static_cast<size_t>(g)];
    v.assign(scores.begin() + g * per_group, scores.begin() + (g + 1) * per_group);
    for (double& x : v) x = std::max(x, 0.0);
    std::sort(v.begin(), v.end(), std::greater<double>());
  }
  for (int64_t k : kept) {
    k = std::clamp<int64_t>(k, 0, parent_size);
    if (!informative) {
      out.push_back(static_cast<double>(k) / static_cast<double>(parent_size));
      continue;
    }
    double sum = 0;
    if (k % groups == 0) {
      for (const auto& v : sorted)
        for (int64_t i = 0; i < k / groups; ++i) sum += v[static_cast<size_t>(i)];
    } else {  // not a per-group count: rank all channels together
      std::vector<double> all;
      for (const auto& v : sorted) all.insert(all.end(), v.begin(), v.end());
      std::sort(all.begin(), all.end(), std::greater<double>());
      for (int64_t i = 0; i < k; ++i) sum += all[static_cast<size_t>(i)];
    }
    out.push_back(sum / total);
  }
  return out;
}

double kept_fraction(const std::vector<double>& scores, int64_t parent_size, int64_t kept, int64_t groups) {
  return kept_fractions(scores, parent_size, {kept}, groups).front();
}

}  // namespace minipuzzle
