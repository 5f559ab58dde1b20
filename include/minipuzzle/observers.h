// Observer points: where the model shows its activations to whoever listens
// (importance scoring, debugging). The model knows nothing of pruning; it only
// calls observe() at these named points, and only when someone subscribed.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace minipuzzle {

enum class ObservePoint {
  BlockInput,      // [b, L, D] residual stream entering layer `layer`
  MixerInput,      // [b, L, D] RMSNorm output fed to the mixer
  MixerOutput,     // [b, L, D] mixer output before the residual add
  MlpActivation,   // [b, L, F] relu(up(x))^2, the input of down_proj
  AttentionHeads,  // [b, L, heads, head_dim] attention output before o_proj
  MambaX,          // [b, L, d_inner] x segment of in_proj's output (pre-conv)
  FinalNorm,       // [b, L, D] norm_f output (layer = number of layers)
};

const char* observe_point_name(ObservePoint p);

class Observer {
 public:
  virtual ~Observer() = default;
  // `value` is a view into the forward pass: read it, do not keep or modify it.
  virtual void observe(ObservePoint point, int64_t layer, const torch::Tensor& value) = 0;
};

}  // namespace minipuzzle
