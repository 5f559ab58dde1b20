#include "minipuzzle/prune_model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <stdexcept>

#include "minipuzzle/errors.h"

namespace minipuzzle {

namespace {

// Rows (or columns) of whole units of `width` entries each: unit u covers
// [u*width, (u+1)*width), plus `offset`.
std::vector<int64_t> unit_rows(const std::vector<int64_t>& units, int64_t width, int64_t offset = 0) {
  std::vector<int64_t> rows;
  rows.reserve(units.size() * static_cast<size_t>(width));
  for (int64_t u : units)
    for (int64_t d = 0; d < width; ++d) rows.push_back(offset + u * width + d);
  return rows;
}

std::vector<int64_t> shifted(const std::vector<int64_t>& v, int64_t offset) {
  std::vector<int64_t> out(v);
  for (auto& x : out) x += offset;
  return out;
}

std::vector<int64_t> range(int64_t begin, int64_t n) {
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = begin + i;
  return out;
}

std::vector<int64_t> concat(std::initializer_list<std::vector<int64_t>> parts) {
  std::vector<int64_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

std::vector<TensorRecipe> prune_recipes(const ModelConfig& pc, const PrunePlan& plan) {
  plan.validate(pc);
  std::vector<TensorRecipe> out;
  auto put = [&](std::string to, std::string from, std::vector<int64_t> rows, std::vector<int64_t> cols) {
    out.push_back({std::move(to), std::move(from), std::move(rows), std::move(cols), {}});
  };
  const auto& hid = plan.hidden;
  put("backbone.embeddings.weight", "backbone.embeddings.weight", {}, hid);
  put("backbone.norm_f.weight", "backbone.norm_f.weight", hid, {});
  put("lm_head.weight", "lm_head.weight", {}, hid);

  for (size_t j = 0; j < plan.kept_layers.size(); ++j) {
    const int64_t i = plan.kept_layers[j];
    const std::string from = fmt::format("backbone.layers.{}.", i), to = fmt::format("backbone.layers.{}.", j);
    auto layer = [&](const char* name, std::vector<int64_t> rows, std::vector<int64_t> cols) {
      put(to + name, from + name, std::move(rows), std::move(cols));
    };
    layer("norm.weight", hid, {});
    switch (pc.layer_type(i)) {
      case LayerType::Mlp: {
        const auto& f = plan.ffn[static_cast<size_t>(i)];
        layer("mixer.up_proj.weight", f, hid);
        layer("mixer.down_proj.weight", hid, f);
        break;
      }
      case LayerType::Attention: {
        const auto q = unit_rows(plan.attention_heads[static_cast<size_t>(i)], pc.head_dim);
        layer("mixer.q_proj.weight", q, hid);
        layer("mixer.k_proj.weight", {}, hid);
        layer("mixer.v_proj.weight", {}, hid);
        layer("mixer.o_proj.weight", hid, q);
        break;
      }
      case LayerType::Mamba: {
        // Channel c = h*P + p of d_inner (z, x, gated norm, out_proj).
        const auto& heads = plan.mamba_heads[static_cast<size_t>(i)];
        const auto& dims = plan.mamba_head_channels[static_cast<size_t>(i)];
        const int64_t P = pc.mamba_head_dim, di = pc.mamba_d_inner(), gn2 = 2 * pc.n_groups * pc.ssm_state_size;
        std::vector<int64_t> ch;
        ch.reserve(heads.size() * dims.size());
        for (int64_t h : heads)
          for (int64_t p : dims) ch.push_back(h * P + p);
        // in_proj rows: [z: d_inner | x: d_inner | B, C: 2GN | dt: H]
        const auto in_rows = concat({ch, shifted(ch, di), range(2 * di, gn2), shifted(heads, 2 * di + gn2)});
        // conv1d channels: [x: d_inner | B, C: 2GN]
        const auto conv_rows = concat({ch, range(di, gn2)});
        layer("mixer.in_proj.weight", in_rows, hid);
        layer("mixer.conv1d.weight", conv_rows, {});
        if (pc.use_conv_bias) layer("mixer.conv1d.bias", conv_rows, {});
        layer("mixer.A_log", heads, {});
        layer("mixer.D", heads, {});
        layer("mixer.dt_bias", heads, {});
        layer("mixer.norm.weight", ch, {});
        layer("mixer.out_proj.weight", hid, ch);
        break;
      }
      case LayerType::Moe: {
        const auto& experts = plan.moe_experts[static_cast<size_t>(i)];
        const auto& f = plan.moe_expert_neurons[static_cast<size_t>(i)];
        const auto& shared = plan.moe_shared_neurons[static_cast<size_t>(i)];
        // The experts read the latent space when there is one (never
        // narrowed), else the hidden channels.
        const std::vector<int64_t> in = pc.moe_latent_size > 0 ? std::vector<int64_t>{} : hid;
        layer("mixer.gate.weight", experts, hid);
        layer("mixer.gate.e_score_correction_bias", experts, {});
        for (size_t q = 0; q < experts.size(); ++q) {
          const std::string src = fmt::format("mixer.experts.{}.", experts[q]), dst = fmt::format("mixer.experts.{}.", q);
          put(to + dst + "up_proj.weight", from + src + "up_proj.weight", f, in);
          put(to + dst + "down_proj.weight", from + src + "down_proj.weight", in, f);
        }
        layer("mixer.shared_experts.up_proj.weight", shared, hid);
        layer("mixer.shared_experts.down_proj.weight", hid, shared);
        if (pc.moe_latent_size > 0) {
          layer("mixer.fc1_latent_proj.weight", {}, hid);
          layer("mixer.fc2_latent_proj.weight", hid, {});
        }
        break;
      }
    }
  }

  // Output shapes from the pruned architecture itself, which also proves
  // that the recipes name every tensor of it exactly once.
  std::map<std::string, TensorRecipe*> by_name;
  for (auto& r : out) by_name[r.name] = &r;
  const auto target = identity_recipes(plan.target);
  if (target.size() != out.size())
    throw std::logic_error(fmt::format("prune_recipes: {} tensors for a model of {}", out.size(), target.size()));
  for (const auto& t : target) {
    auto it = by_name.find(t.name);
    if (it == by_name.end()) throw std::logic_error("prune_recipes: nothing sliced for " + t.name);
    it->second->shape = t.shape;
  }
  return out;
}

HybridLM prune_model(HybridLM& parent, const PrunePlan& plan) {
  const auto recipes = prune_recipes(parent->config(), plan);
  torch::NoGradGuard no_grad;
  auto src = parent->named_parameters();
  HybridLM child(plan.target, torch::TensorOptions().dtype(parent->dtype()).device(parent->device()));
  auto dst = child->named_parameters();
  for (const auto& r : recipes) {
    const torch::Tensor* from = src.find(r.source);
    if (!from) throw std::logic_error("prune_model: the parent has no parameter " + r.source);
    auto sliced = apply_recipe(from->detach(), r);
    torch::Tensor* to = dst.find(r.name);
    if (sliced.sizes().vec() != r.shape)
      throw std::logic_error(fmt::format("prune_model: {} sliced to [{}], the pruned model needs [{}]", r.name,
                                         fmt::join(sliced.sizes(), ", "), fmt::join(r.shape, ", ")));
    to->copy_(sliced);
  }
  return child;
}

}  // namespace minipuzzle
