// Observer points: where the model shows its activations to whoever listens
// (importance scoring, debugging). The model knows nothing of pruning; it only
// calls observe() at these named points, and only when someone subscribed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace minipuzzle {

enum class ObservePoint {
  BlockInput,      // [b, L, D] residual stream entering layer `layer`
  MixerInput,      // [b, L, D] RMSNorm output fed to the mixer
  MixerOutput,     // [b, L, D] mixer output before the residual add
  MlpActivation,   // [b, L, F] relu(up(x))^2, the input of down_proj
  AttentionHeads,  // [b, L, heads, head_dim] attention output before o_proj
  MambaX,          // [b, L, d_inner] x segment of in_proj's output (pre-conv)
  FinalNorm,       // [b, L, D] norm_f output (layer = number of layers)
  MoeSharedActivation,  // [b, L, Fs] relu(up(x))^2 of an E layer's shared expert
};

// What an E layer's router and routed experts did in one forward. T tokens
// (the block input flattened batch-major, `batch` samples of T / batch),
// k = num_experts_per_tok slots per token. Slots are grouped by expert in
// ascending expert order (tokens ascending within an expert), as the
// experts compute them.
struct MoeRouting {
  int64_t batch = 0;
  torch::Tensor indices, weights;  // [T, k] chosen experts (int64) and routing weights (fp32)
  torch::Tensor slot_token;        // [T*k] int64: the token of each slot
  torch::Tensor slot_weight;       // [T*k] fp32: the routing weight of each slot
  std::vector<int64_t> counts;     // [E] slots per expert
  // Per expert: [counts[e], F] relu(up(x))^2, the input of its down_proj
  // (undefined when no token chose it).
  std::vector<torch::Tensor> activations;
  // [T*k] fp32: || weight * expert output ||_2 per slot (in the experts'
  // output space, before fc2_latent_proj when there is one).
  torch::Tensor weighted_output_norm;
};

const char* observe_point_name(ObservePoint p);

class Observer {
 public:
  virtual ~Observer() = default;
  // `value` is a view into the forward pass: read it, do not keep or modify it.
  virtual void observe(ObservePoint point, int64_t layer, const torch::Tensor& value) = 0;
  // E layers: called once per forward of the layer; the default ignores it.
  virtual void observe_moe(int64_t /*layer*/, const MoeRouting& /*routing*/) {}
};

}  // namespace minipuzzle
