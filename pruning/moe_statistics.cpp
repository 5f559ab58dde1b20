#include "minipuzzle/moe_statistics.h"

#include <fmt/format.h>

namespace minipuzzle {

MoeStatistics::MoeStatistics(const ModelConfig& config, Aggregation aggregation) : cfg_(config), agg_(aggregation) {}

void MoeStatistics::observe(ObservePoint point, int64_t layer, const torch::Tensor& value) {
  if (point != ObservePoint::MoeSharedActivation) return;
  torch::NoGradGuard no_grad;
  layers_[layer].shared.add(aggregate_sequence(value, agg_.seq));
}

void MoeStatistics::observe_moe(int64_t layer, const MoeRouting& r) {
  if (!r.indices.defined() || r.batch <= 0) return;  // no tokens
  torch::NoGradGuard no_grad;
  const int64_t E = cfg_.n_routed_experts, F = cfg_.moe_intermediate_size;
  const int64_t T = r.indices.size(0), b = r.batch, L = T / b;
  Layer& st = layers_[layer];
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(r.slot_weight.device());
  if (!st.slots.defined()) {
    st.slots = torch::zeros({E}, f64);
    st.weight_sum = torch::zeros({E}, f64);
    st.norm_sum = torch::zeros({E}, f64);
  }
  // Slots are grouped by expert: expert of each slot, in slot order.
  auto counts = torch::tensor(r.counts, torch::TensorOptions().dtype(torch::kInt64)).to(r.slot_weight.device());
  auto slot_expert = torch::repeat_interleave(counts);
  st.slots += counts.to(torch::kFloat64);
  st.weight_sum.index_add_(0, slot_expert, r.slot_weight.to(torch::kFloat64));
  st.norm_sum.index_add_(0, slot_expert, r.weighted_output_norm.to(torch::kFloat64));
  st.tokens += T;

  // Expert-FFN neurons: per expert, its slots' activations aggregated over
  // each sample's sequence (absent tokens are zeros), summed over experts.
  auto per_sample = torch::zeros({b, F}, f64);
  int64_t first = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = r.counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    auto act = r.activations[static_cast<size_t>(e)].to(torch::kFloat64);
    auto sample = r.slot_token.narrow(0, first, n).div(L, "floor");
    first += n;
    auto part = torch::zeros({b, F}, f64);
    switch (agg_.seq) {
      case SeqAggregation::Mean: part.index_add_(0, sample, act.abs()).div_(static_cast<double>(L)); break;
      case SeqAggregation::L2: part.index_add_(0, sample, act.square()).sqrt_(); break;
      case SeqAggregation::Max:
        part = part.index_reduce(0, sample, act.abs(), "amax", /*include_self=*/true);
        break;
    }
    per_sample += part;
  }
  st.neurons.add(per_sample);
}

void MoeStatistics::fill(ImportanceScores& s) const {
  const int64_t n = cfg_.num_layers();
  for (auto* v : {&s.moe_experts, &s.moe_expert_frequency, &s.moe_expert_weight, &s.moe_expert_neurons,
                  &s.moe_shared_neurons})
    v->assign(static_cast<size_t>(n), {});
  auto to_vec = [](const torch::Tensor& t) {
    auto c = t.to(torch::kFloat32).cpu().contiguous();
    return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  };
  for (const auto& [layer, st] : layers_) {
    const auto i = static_cast<size_t>(layer);
    if (st.slots.defined()) {
      auto used = st.slots.clamp_min(1.0);  // an expert never chosen scores 0
      s.moe_experts[i] = to_vec(st.norm_sum / used);
      s.moe_expert_weight[i] = to_vec(st.weight_sum / used);
      s.moe_expert_frequency[i] = to_vec(st.slots / static_cast<double>(std::max<int64_t>(st.tokens, 1)));
    }
    if (st.neurons.samples() > 0) s.moe_expert_neurons[i] = to_vec(st.neurons.result(agg_.batch));
    if (st.shared.samples() > 0) s.moe_shared_neurons[i] = to_vec(st.shared.result(agg_.batch));
  }
}

}  // namespace minipuzzle
