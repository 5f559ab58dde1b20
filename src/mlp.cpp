#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

MlpImpl::MlpImpl(const ModelConfig& c, const ParameterInit& o) {
  up_proj = register_module("up_proj", weights({c.intermediate_size, c.hidden_size}, o));
  down_proj =
      register_module("down_proj", weights({c.hidden_size, c.intermediate_size}, o));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs) {
  auto act = torch::relu(torch::linear(h, up_proj->weight)).square();  // relu^2, no gate
  if (!obs.empty()) obs.notify(ObservePoint::MlpActivation, layer, act);
  return torch::linear(act, down_proj->weight);
}

}  // namespace minipuzzle
