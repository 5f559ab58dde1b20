// The routed experts of an MoE layer as one autograd node: tokens gathered
// once into a buffer sorted by expert, one matmul pair per expert on its own
// contiguous rows, the weighted rows scatter-added once per token. Its
// backward is the same grouped loop by hand (four matmuls per expert), so
// autograd records one node instead of ~8 per expert, and keeps only what
// the backward needs: the slot indices, the experts' pre-activations and
// outputs, the routing weights and the (not gathered) input.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace minipuzzle {

// Which rows go to which expert: slots (token, choice) sorted by expert,
// stably, so each expert's rows keep token order.
struct ExpertSlots {
  torch::Tensor token;          // [N] int64, the token of each slot, on x's device
  // [T, k] int64: the slots of token t, its experts in ascending order.
  torch::Tensor slot_of;
  std::vector<int64_t> counts;  // [E] slots per expert, summing to N
};

// What the forward pass computed per slot, for observers (views, detached).
struct GroupedExpertsTrace {
  torch::Tensor activations;  // [N, F] relu(up x)^2, rows in slot order
  torch::Tensor weighted;     // [N, Din] fp32, routing weight * expert output
};

// out[t] = sum over t's slots s, in ascending expert order, of
//   slot_weight[s] * down_e(relu(up_e(x[t]))^2)      (e = the slot's expert)
// x [T, Din] in the experts' dtype, slot_weight [N] fp32, up[e] [F, Din],
// down[e] [Din, F]. The result is [T, Din] fp32 (transformers sums the
// weighted outputs in the routing weights' dtype). Differentiable w.r.t. x,
// slot_weight and every expert weight; experts with no slot get no gradient.
torch::Tensor grouped_experts(const torch::Tensor& x, const ExpertSlots& slots, const torch::Tensor& slot_weight,
                              const std::vector<torch::Tensor>& up, const std::vector<torch::Tensor>& down,
                              GroupedExpertsTrace* trace = nullptr);

}  // namespace minipuzzle
