#include "minipuzzle/prune_model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <stdexcept>

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

HybridLM prune_model(HybridLM& parent, const PrunePlan& plan) {
  const ModelConfig& pc = parent->config();
  plan.validate(pc);
  torch::NoGradGuard no_grad;
  const torch::Device device = parent->device();
  const torch::ScalarType dtype = parent->dtype();
  auto src = parent->named_parameters();
  auto index = [&](const std::vector<int64_t>& v) {
    return torch::tensor(at::ArrayRef<int64_t>(v), torch::kInt64).to(device);
  };
  auto get = [&](const std::string& name) {
    const torch::Tensor* t = src.find(name);
    if (!t) throw std::logic_error("prune_model: the parent has no parameter " + name);
    return t->detach();
  };

  std::map<std::string, torch::Tensor> out;
  const auto hid = index(plan.hidden);
  out["backbone.embeddings.weight"] = get("backbone.embeddings.weight").index_select(1, hid);
  out["backbone.norm_f.weight"] = get("backbone.norm_f.weight").index_select(0, hid);
  out["lm_head.weight"] = get("lm_head.weight").index_select(1, hid);

  for (size_t j = 0; j < plan.kept_layers.size(); ++j) {
    const int64_t i = plan.kept_layers[j];
    const std::string from = fmt::format("backbone.layers.{}.", i), to = fmt::format("backbone.layers.{}.", j);
    auto w = [&](const char* name) { return get(from + name); };
    auto put = [&](const char* name, torch::Tensor t) { out[to + name] = std::move(t); };
    put("norm.weight", w("norm.weight").index_select(0, hid));
    switch (pc.layer_type(i)) {
      case LayerType::Mlp: {
        const auto f = index(plan.ffn[static_cast<size_t>(i)]);
        put("mixer.up_proj.weight", w("mixer.up_proj.weight").index_select(0, f).index_select(1, hid));
        put("mixer.down_proj.weight", w("mixer.down_proj.weight").index_select(0, hid).index_select(1, f));
        break;
      }
      case LayerType::Attention: {
        const auto q = index(unit_rows(plan.attention_heads[static_cast<size_t>(i)], pc.head_dim));
        put("mixer.q_proj.weight", w("mixer.q_proj.weight").index_select(0, q).index_select(1, hid));
        put("mixer.k_proj.weight", w("mixer.k_proj.weight").index_select(1, hid));
        put("mixer.v_proj.weight", w("mixer.v_proj.weight").index_select(1, hid));
        put("mixer.o_proj.weight", w("mixer.o_proj.weight").index_select(0, hid).index_select(1, q));
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
        const auto in_rows = index(concat({ch, shifted(ch, di), range(2 * di, gn2), shifted(heads, 2 * di + gn2)}));
        // conv1d channels: [x: d_inner | B, C: 2GN]
        const auto conv_rows = index(concat({ch, range(di, gn2)}));
        const auto c = index(ch), hd = index(heads);
        put("mixer.in_proj.weight", w("mixer.in_proj.weight").index_select(0, in_rows).index_select(1, hid));
        put("mixer.conv1d.weight", w("mixer.conv1d.weight").index_select(0, conv_rows));
        if (pc.use_conv_bias) put("mixer.conv1d.bias", w("mixer.conv1d.bias").index_select(0, conv_rows));
        put("mixer.A_log", w("mixer.A_log").index_select(0, hd));
        put("mixer.D", w("mixer.D").index_select(0, hd));
        put("mixer.dt_bias", w("mixer.dt_bias").index_select(0, hd));
        put("mixer.norm.weight", w("mixer.norm.weight").index_select(0, c));
        put("mixer.out_proj.weight", w("mixer.out_proj.weight").index_select(0, hid).index_select(1, c));
        break;
      }
    }
  }

  HybridLM child(plan.target);
  child->to(device, dtype);
  auto dst = child->named_parameters();
  if (dst.size() != out.size())
    throw std::logic_error(fmt::format("prune_model: sliced {} tensors for a model of {}", out.size(), dst.size()));
  for (auto& p : dst) {
    auto it = out.find(p.key());
    if (it == out.end()) throw std::logic_error("prune_model: nothing sliced for " + p.key());
    if (it->second.sizes() != p.value().sizes())
      throw std::logic_error(fmt::format("prune_model: {} sliced to [{}], the pruned model needs [{}]", p.key(),
                                         fmt::join(it->second.sizes(), ", "), fmt::join(p.value().sizes(), ", ")));
    p.value().copy_(it->second);
  }
  return child;
}

}  // namespace minipuzzle
