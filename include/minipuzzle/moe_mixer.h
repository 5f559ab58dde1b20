// The mixture-of-experts (`E`) mixer, transformers' NemotronHMoE:
//
//   y = fc2(experts(fc1(x), router(x))) + shared_experts(x)
//
// where the router is NemotronHTopkRouter (sigmoid scores, group-limited
// top-k, weights = unbiased scores of the chosen experts), each routed
// expert is a no-gate relu^2 MLP, and fc1/fc2 are the optional latent
// projections (moe_latent_size). Parameters carry the Hub names
// (`mixer.gate.weight`, `mixer.gate.e_score_correction_bias`,
// `mixer.experts.K.up_proj.weight`, `mixer.shared_experts.up_proj.weight`,
// `mixer.fc1_latent_proj.weight`, ...).
#pragma once

#include <torch/torch.h>

#include <set>
#include <string>

#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

class CheckpointReader;

// What the router picked for each token: `indices` [T, k] int64 and
// `weights` [T, k] fp32 (differentiable w.r.t. the router weight).
struct RouterChoice {
  torch::Tensor weights, indices;
};

// x [T, D] in any float dtype. Like transformers: the logits are an fp32
// linear of x and the router weight, scores = sigmoid(logits); the choice
// adds `correction_bias` (fp32, never trained), keeps the `topk_group` best
// groups by the sum of each group's two best scores, then the top k; the
// weights are the chosen experts' scores without the bias, divided by their
// sum (+1e-20) when norm_topk_prob, times routed_scaling_factor.
RouterChoice route_tokens(const torch::Tensor& x, const torch::Tensor& router_weight,
                          const torch::Tensor& correction_bias, const ModelConfig& c);

class MoeRouterImpl : public torch::nn::Module {
 public:
  MoeRouterImpl(const ModelConfig& c, const ParameterInit& init);
  torch::Tensor weight;  // [E, D], model dtype, trained
  // [E] fp32 always (transformers keeps it fp32), requires_grad false: it
  // only shifts which experts are chosen and is not trained.
  torch::Tensor e_score_correction_bias;
};
TORCH_MODULE(MoeRouter);

// One routed expert: down(relu(up(x))^2), up [F, Din], down [Din, F].
class MoeExpertImpl : public torch::nn::Module {
 public:
  MoeExpertImpl(const ModelConfig& c, const ParameterInit& init);
  Weights up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MoeExpert);

class MoeMixerImpl : public torch::nn::Module {
 public:
  MoeMixerImpl(const ModelConfig& c, const ParameterInit& init);
  // h [.., D] -> [.., D] in h's dtype.
  torch::Tensor forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs);
  // The routed part alone on x [T, D] (no shared expert): tokens sorted by
  // expert, one matmul pair per expert over its own tokens, the weighted
  // results summed per token in fp32 (no [tokens x experts] product).
  // `observed`, when given, receives the slots, activations and weighted
  // output norms (observers.h, MoeRouting); the result is the same.
  torch::Tensor routed_experts(const torch::Tensor& x, const RouterChoice& choice, MoeRouting* observed = nullptr);

  MoeRouter gate{nullptr};
  std::vector<MoeExpert> experts;
  Weights shared_up{nullptr}, shared_down{nullptr};
  Weights fc1_latent_proj{nullptr}, fc2_latent_proj{nullptr};  // null without a latent size

 private:
  ModelConfig cfg_;
};
TORCH_MODULE(MoeMixer);

// Checkpoints in transformers-5's fused layout hold one 3-D tensor per layer
// and projection (`...mixer.experts.up_proj` [E, F, Din], `down_proj`
// [E, Din, F]) where the Hub has one tensor per expert
// (`...mixer.experts.K.up_proj.weight`). When `hub_name` is a per-expert
// name that the reader lacks but whose fused tensor it has, reads expert K's
// slice into `out` (after checking the fused shape), adds the fused name to
// `used` and returns true; false otherwise.
bool read_fused_expert(const CheckpointReader& reader, const ModelConfig& c, const std::string& hub_name,
                       torch::Tensor& out, std::set<std::string>& used);

}  // namespace minipuzzle
