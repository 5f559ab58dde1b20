#include "minipuzzle/moe_mixer.h"

#include <fmt/format.h>

#include <limits>
#include <regex>

#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/moe_grouped_experts.h"

namespace minipuzzle {

RouterChoice route_tokens(const torch::Tensor& x, const torch::Tensor& router_weight,
                          const torch::Tensor& correction_bias, const ModelConfig& c) {
  const int64_t E = c.n_routed_experts, G = c.n_group, per_group = E / G;
  // The op sequence is transformers' so ties (equal scores) resolve alike.
  auto logits = torch::linear(x.to(torch::kFloat32), router_weight.to(torch::kFloat32));
  auto scores = logits.sigmoid();
  auto for_choice = scores + correction_bias.to(torch::kFloat32);
  torch::Tensor indices;
  {
    torch::NoGradGuard no_grad;  // the choice is discrete; only the weights carry gradient
    auto choice = for_choice.detach();
    auto group_scores = std::get<0>(choice.view({-1, G, per_group}).topk(2, -1)).sum(-1);
    auto group_idx = std::get<1>(torch::topk(group_scores, c.topk_group, -1, /*largest=*/true, /*sorted=*/false));
    auto group_mask = torch::zeros_like(group_scores);
    group_mask.scatter_(1, group_idx, 1);
    auto score_mask = group_mask.unsqueeze(-1).expand({-1, G, per_group}).reshape({-1, E});
    choice = choice.masked_fill(score_mask.logical_not(), -std::numeric_limits<float>::infinity());
    indices = std::get<1>(torch::topk(choice, c.num_experts_per_tok, -1, /*largest=*/true, /*sorted=*/false));
  }
  auto weights = scores.gather(1, indices);
  if (c.norm_topk_prob) weights = weights / (weights.sum(-1, /*keepdim=*/true) + 1e-20);
  weights = weights * c.routed_scaling_factor;
  return {weights, indices};
}

MoeRouterImpl::MoeRouterImpl(const ModelConfig& c, const ParameterInit& init) {
  weight = register_parameter("weight", init.make({c.n_routed_experts, c.hidden_size}));
  ParameterInit fp32 = init;
  fp32.options = init.options.dtype(torch::kFloat32);
  e_score_correction_bias =
      register_parameter("e_score_correction_bias", fp32.make({c.n_routed_experts}), /*requires_grad=*/false);
}

MoeExpertImpl::MoeExpertImpl(const ModelConfig& c, const ParameterInit& init) {
  up_proj = register_module("up_proj", weights({c.moe_intermediate_size, c.moe_expert_input_dim()}, init));
  down_proj = register_module("down_proj", weights({c.moe_expert_input_dim(), c.moe_intermediate_size}, init));
}

MoeMixerImpl::MoeMixerImpl(const ModelConfig& c, const ParameterInit& init) : cfg_(c) {
  gate = register_module("gate", MoeRouter(c, init));
  auto list = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    experts.push_back(MoeExpert(c, init));
    list->push_back(experts.back());
  }
  auto shared = register_module("shared_experts", std::make_shared<torch::nn::Module>("SharedExpert"));
  shared_up = shared->register_module(
      "up_proj", weights({c.moe_shared_expert_intermediate_size, c.hidden_size}, init));
  shared_down = shared->register_module(
      "down_proj", weights({c.hidden_size, c.moe_shared_expert_intermediate_size}, init));
  if (c.moe_latent_size > 0) {
    fc1_latent_proj = register_module("fc1_latent_proj", weights({c.moe_latent_size, c.hidden_size}, init));
    fc2_latent_proj = register_module("fc2_latent_proj", weights({c.hidden_size, c.moe_latent_size}, init));
  }
}

torch::Tensor MoeMixerImpl::routed_experts(const torch::Tensor& x, const RouterChoice& choice, MoeRouting* observed) {
  const int64_t T = x.size(0), k = choice.indices.size(1), E = cfg_.n_routed_experts;
  if (T == 0) return torch::zeros_like(x);
  // Each token's experts ascending, then the slots sorted by expert, stably:
  // within an expert the tokens keep their order, and each token's results
  // are added in ascending expert order, as transformers' per-expert loop.
  auto [sorted_experts, perm] = choice.indices.sort(/*dim=*/1);
  auto flat = sorted_experts.reshape({-1});  // [T*k], token-major
  auto order = std::get<1>(flat.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  ExpertSlots slots;
  slots.token = order.div(k, "floor");
  slots.slot_of = torch::empty_like(order).scatter_(0, order, torch::arange(T * k, order.options())).view({T, k});
  auto counts = torch::bincount(flat, {}, E).to(torch::kCPU);
  const auto* n = counts.data_ptr<int64_t>();
  auto slot_weight = choice.weights.gather(1, perm).reshape({-1}).index_select(0, order);
  // Only the experts some token chose: the others stay out of the autograd
  // graph, so their .grad stays undefined as before (an edge with no
  // gradient would reach their hooks, e.g. the data-parallel all-reduce's).
  std::vector<torch::Tensor> up, down;
  for (int64_t e = 0; e < E; ++e) {
    if (n[e] == 0) continue;
    slots.counts.push_back(n[e]);
    up.push_back(experts[static_cast<size_t>(e)]->up_proj->weight);
    down.push_back(experts[static_cast<size_t>(e)]->down_proj->weight);
  }
  GroupedExpertsTrace trace;
  auto out = grouped_experts(x, slots, slot_weight, up, down, observed ? &trace : nullptr);
  if (observed) {
    torch::NoGradGuard no_grad;
    observed->indices = choice.indices;
    observed->weights = choice.weights.detach();
    observed->slot_token = slots.token;
    observed->slot_weight = slot_weight.detach();
    observed->counts.assign(n, n + E);
    observed->activations.assign(static_cast<size_t>(E), torch::Tensor());
    int64_t r0 = 0;
    for (int64_t e = 0; e < E; ++e) {
      if (n[e] > 0) observed->activations[static_cast<size_t>(e)] = trace.activations.narrow(0, r0, n[e]);
      r0 += n[e];
    }
    observed->weighted_output_norm = trace.weighted.norm(2, {1});
  }
  return out.to(x.scalar_type());
}

torch::Tensor MoeMixerImpl::forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs) {
  auto x = h.reshape({-1, h.size(-1)});
  RouterChoice choice = route_tokens(x, gate->weight, gate->e_score_correction_bias, cfg_);
  auto xl = fc1_latent_proj ? torch::linear(x, fc1_latent_proj->weight) : x;
  MoeRouting routing;
  routing.batch = h.dim() >= 3 ? h.size(0) : 1;
  auto routed = routed_experts(xl, choice, obs.empty() ? nullptr : &routing);
  if (!obs.empty()) obs.notify_moe(layer, routing);
  if (fc2_latent_proj) routed = torch::linear(routed, fc2_latent_proj->weight);
  auto shared_act = torch::relu(torch::linear(h, shared_up->weight)).square();
  if (!obs.empty()) obs.notify(ObservePoint::MoeSharedActivation, layer, shared_act);
  auto shared = torch::linear(shared_act, shared_down->weight);
  return routed.view(h.sizes()) + shared;
}

bool read_fused_expert(const CheckpointReader& reader, const ModelConfig& c, const std::string& hub_name,
                       torch::Tensor& out, std::set<std::string>& used) {
  static const std::regex per_expert(R"((.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight)");
  std::smatch m;
  if (!std::regex_match(hub_name, m, per_expert)) return false;
  const std::string fused = m[1].str() + "." + m[3].str();
  if (!reader.contains(fused)) return false;
  const int64_t F = c.moe_intermediate_size, Din = c.moe_expert_input_dim();
  const bool up = m[3].str() == "up_proj";
  reader.check(fused, up ? std::vector<int64_t>{c.n_routed_experts, F, Din}
                         : std::vector<int64_t>{c.n_routed_experts, Din, F});
  const int64_t expert = std::stoll(m[2].str());
  torch::NoGradGuard no_grad;
  out.copy_(reader.read_rows(fused, expert, 1, out.scalar_type()).squeeze(0));
  used.insert(fused);
  return true;
}

}  // namespace minipuzzle
