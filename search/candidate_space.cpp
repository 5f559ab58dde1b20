#include "minipuzzle/candidate_space.h"

#include <cmath>
#include <cstdlib>
#include <algorithm>

#include "minipuzzle/errors.h"

namespace minipuzzle {

std::vector<int64_t> IntAxis::values() const {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < size(); ++i) v.push_back(min + i * step);
  return v;
}

std::string IntAxis::to_string() const {
  if (min == max) return std::to_string(min);
  return std::to_string(min) + ":" + std::to_string(max) + ":" + std::to_string(step);
}

namespace {

// The parent's value minus as many whole steps as fit in `fraction` of it.
IntAxis down_to(int64_t parent, double fraction, int64_t step) {
  if (parent <= 0 || step <= 0) return IntAxis::fixed(parent);
  int64_t steps = static_cast<int64_t>(std::floor(static_cast<double>(parent) * fraction / static_cast<double>(step)));
  if (parent - steps * step <= 0) --steps;
  return {parent - steps * step, parent, step};
}

int64_t default_step(const std::string& name, const ModelConfig& p) {
  if (name == "ffn") return 1024;
  if (name == "hidden") return 256;
  if (name == "mamba_heads") return p.n_groups;
  if (name == "attention_heads") return p.num_key_value_heads;
  if (name == "moe_experts") return p.n_group;
  if (name == "moe_expert_ffn") return 128;
  if (name == "moe_shared_ffn") return 256;
  return 1;
}

int64_t parse_int(const std::string& text, const std::string& spec) {
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0')
    throw InputError("axis '" + spec + "': '" + text + "' is not an integer; expected name=min:max:step");
  return v;
}

}  // namespace

int64_t min_moe_experts(const ModelConfig& p) {
  if (!p.has_moe()) return 0;
  // Per group: at least 2 (the group score sums two) and enough that the
  // topk_group groups a token may use hold num_experts_per_tok experts.
  const int64_t per_group =
      std::max<int64_t>(2, (p.num_experts_per_tok + p.topk_group - 1) / std::max<int64_t>(p.topk_group, 1));
  return per_group * p.n_group;
}

CandidateSpace CandidateSpace::depth_only(const ModelConfig& p) {
  CandidateSpace s;
  s.mamba_layers = {0, p.count(LayerType::Mamba), 1};
  s.attention_layers = {0, p.count(LayerType::Attention), 1};
  s.mlp_layers = {0, p.count(LayerType::Mlp), 1};
  s.ffn = IntAxis::fixed(p.intermediate_size);
  s.hidden = IntAxis::fixed(p.hidden_size);
  s.mamba_heads = IntAxis::fixed(p.mamba_num_heads);
  s.mamba_head_dim = IntAxis::fixed(p.mamba_head_dim);
  s.attention_heads = IntAxis::fixed(p.num_attention_heads);
  s.moe_layers = {0, p.count(LayerType::Moe), 1};
  s.moe_experts = IntAxis::fixed(p.n_routed_experts);
  s.moe_expert_ffn = IntAxis::fixed(p.moe_intermediate_size);
  s.moe_shared_ffn = IntAxis::fixed(p.moe_shared_expert_intermediate_size);
  return s;
}

CandidateSpace CandidateSpace::paper_grid(const ModelConfig& p) {
  CandidateSpace s = depth_only(p);
  if (p.count(LayerType::Mlp) > 0) s.ffn = down_to(p.intermediate_size, 0.25, 1024);
  return s;
}

CandidateSpace CandidateSpace::full(const ModelConfig& p) {
  CandidateSpace s = depth_only(p);
  s.hidden = down_to(p.hidden_size, 0.5, 256);
  if (p.count(LayerType::Mlp) > 0) s.ffn = down_to(p.intermediate_size, 0.5, 1024);
  if (p.count(LayerType::Mamba) > 0) s.mamba_heads = down_to(p.mamba_num_heads, 0.5, p.n_groups);
  if (p.count(LayerType::Attention) > 0) s.attention_heads = down_to(p.num_attention_heads, 0.5, p.num_key_value_heads);
  if (p.has_moe()) {
    s.moe_experts = down_to(p.n_routed_experts, 0.5, p.n_group);
    while (s.moe_experts.min < s.moe_experts.max && s.moe_experts.min < min_moe_experts(p))
      s.moe_experts.min += s.moe_experts.step;
    s.moe_expert_ffn = down_to(p.moe_intermediate_size, 0.5, 128);
    s.moe_shared_ffn = down_to(p.moe_shared_expert_intermediate_size, 0.5, 256);
  }
  return s;
}

void CandidateSpace::set_axis(const std::string& spec, const ModelConfig& parent) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos) throw InputError("axis '" + spec + "': expected name=min:max:step or name=value");
  std::string name = spec.substr(0, eq), range = spec.substr(eq + 1);
  IntAxis* axis = nullptr;
  if (name == "mamba_layers") axis = &mamba_layers;
  else if (name == "attention_layers") axis = &attention_layers;
  else if (name == "mlp_layers") axis = &mlp_layers;
  else if (name == "ffn") axis = &ffn;
  else if (name == "hidden") axis = &hidden;
  else if (name == "mamba_heads") axis = &mamba_heads;
  else if (name == "mamba_head_dim") axis = &mamba_head_dim;
  else if (name == "attention_heads") axis = &attention_heads;
  else if (name == "moe_layers") axis = &moe_layers;
  else if (name == "moe_experts") axis = &moe_experts;
  else if (name == "moe_expert_ffn") axis = &moe_expert_ffn;
  else if (name == "moe_shared_ffn") axis = &moe_shared_ffn;
  else
    throw InputError("axis '" + spec + "': unknown axis '" + name +
                     "'; expected mamba_layers, attention_layers, mlp_layers, ffn, hidden, mamba_heads, "
                     "mamba_head_dim, attention_heads, moe_layers, moe_experts, moe_expert_ffn or moe_shared_ffn");
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    size_t colon = range.find(':', start);
    parts.push_back(range.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  if (parts.size() > 3) throw InputError("axis '" + spec + "': expected at most min:max:step");
  int64_t lo = parse_int(parts[0], spec);
  int64_t hi = parts.size() > 1 ? parse_int(parts[1], spec) : lo;
  int64_t step = parts.size() > 2 ? parse_int(parts[2], spec) : default_step(name, parent);
  *axis = {lo, hi, lo == hi && parts.size() < 3 ? 1 : step};
}

void CandidateSpace::validate(const ModelConfig& p) const {
  auto range = [](const IntAxis& a, const char* name) {
    const std::string n = name;
    if (a.step <= 0) throw InputError("axis " + n + ": step must be positive, got " + std::to_string(a.step));
    if (a.min > a.max) throw InputError("axis " + n + ": min " + std::to_string(a.min) + " is above max " + std::to_string(a.max));
    if ((a.max - a.min) % a.step != 0)
      throw InputError("axis " + n + ": range " + a.to_string() + " is not a whole number of steps of " +
                       std::to_string(a.step));
  };
  auto layers = [&](const IntAxis& a, const char* name, LayerType t) {
    range(a, name);
    if (a.min < 0) throw InputError(std::string("axis ") + name + ": cannot keep a negative number of layers");
    if (a.max > p.count(t))
      throw InputError(std::string("axis ") + name + ": max " + std::to_string(a.max) + " is above the parent's " +
                       std::to_string(p.count(t)) + " " + layer_type_name(t) + " layers");
  };
  layers(mamba_layers, "mamba_layers", LayerType::Mamba);
  layers(attention_layers, "attention_layers", LayerType::Attention);
  layers(mlp_layers, "mlp_layers", LayerType::Mlp);
  layers(moe_layers, "moe_layers", LayerType::Moe);
  // A width whose layers the parent lacks stays at the parent's value.
  auto width = [&](const IntAxis& a, const char* name, int64_t parent, bool used, int64_t multiple,
                   const char* multiple_of) {
    range(a, name);
    const std::string n = name;
    if (!used) {
      if (a.min != parent || a.max != parent)
        throw InputError("axis " + n + ": the parent has no layers that use it; leave it at " + std::to_string(parent));
      return;
    }
    if (a.min <= 0) throw InputError("axis " + n + ": values must be positive, got " + std::to_string(a.min));
    if (a.max > parent)
      throw InputError("axis " + n + ": max " + std::to_string(a.max) + " is above the parent's " + std::to_string(parent) +
                       " (pruning cannot grow a width)");
    if (multiple > 1 && (a.min % multiple != 0 || (a.min != a.max && a.step % multiple != 0)))
      throw InputError("axis " + n + ": " + a.to_string() + " has values that are not multiples of " + multiple_of +
                       " (" + std::to_string(multiple) + "); use min and step that are multiples of it");
    if (allowed(a, parent).empty())
      throw InputError("axis " + n + ": no value of " + a.to_string() + " keeps at least " +
                       std::to_string(static_cast<int64_t>(std::ceil(static_cast<double>(parent) * (1 - max_width_reduction)))) +
                       " (max_width_reduction " + std::to_string(max_width_reduction) + ")");
  };
  const bool m = p.count(LayerType::Mamba) > 0, at = p.count(LayerType::Attention) > 0, mlp = p.count(LayerType::Mlp) > 0;
  width(hidden, "hidden", p.hidden_size, true, 1, "");
  width(ffn, "ffn", p.intermediate_size, mlp, 1, "");
  width(mamba_heads, "mamba_heads", p.mamba_num_heads, m, p.n_groups, "n_groups");
  width(mamba_head_dim, "mamba_head_dim", p.mamba_head_dim, m, 1, "");
  width(attention_heads, "attention_heads", p.num_attention_heads, at, p.num_key_value_heads, "num_key_value_heads");
  const bool moe = p.has_moe();
  width(moe_experts, "moe_experts", p.n_routed_experts, moe, p.n_group, "n_group");
  if (moe && moe_experts.min < min_moe_experts(p))
    throw InputError("axis moe_experts: " + moe_experts.to_string() + " goes below " +
                     std::to_string(min_moe_experts(p)) +
                     " routed experts, the fewest the router can use (num_experts_per_tok " +
                     std::to_string(p.num_experts_per_tok) + ", at least 2 per router group of " +
                     std::to_string(p.n_group) + ", topk_group " + std::to_string(p.topk_group) + ")");
  width(moe_expert_ffn, "moe_expert_ffn", p.moe_intermediate_size, moe, 1, "");
  width(moe_shared_ffn, "moe_shared_ffn", p.moe_shared_expert_intermediate_size, moe, 1, "");
  for (double r : {max_depth_reduction, max_width_reduction, min_budget_use})
    if (!(r >= 0 && r <= 1))
      throw InputError("max_depth_reduction, max_width_reduction and min_budget_use must lie in [0, 1]");
  if (mamba_layers.max + attention_layers.max + mlp_layers.max + moe_layers.max < min_layers(p))
    throw InputError("the layer axes keep at most " +
                     std::to_string(mamba_layers.max + attention_layers.max + mlp_layers.max + moe_layers.max) +
                     " layers but max_depth_reduction requires at least " + std::to_string(min_layers(p)));
}

std::vector<int64_t> CandidateSpace::allowed(const IntAxis& axis, int64_t parent_value) const {
  const double floor_value = std::ceil(static_cast<double>(parent_value) * (1 - max_width_reduction) - 1e-9);
  std::vector<int64_t> out;
  for (int64_t v : axis.values())
    if (static_cast<double>(v) >= floor_value) out.push_back(v);
  return out;
}

int64_t CandidateSpace::min_layers(const ModelConfig& parent) const {
  const double n = static_cast<double>(parent.num_layers()) * (1 - max_depth_reduction);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(n - 1e-9)));
}

double CandidateSpace::grid_size() const {
  double n = 1;
  for (const IntAxis* a : {&mamba_layers, &attention_layers, &mlp_layers, &ffn, &hidden, &mamba_heads,
                           &mamba_head_dim, &attention_heads, &moe_layers, &moe_experts, &moe_expert_ffn,
                           &moe_shared_ffn})
    n *= static_cast<double>(a->size());
  return n;
}

}  // namespace minipuzzle
