#include "minipuzzle/observers.h"

#include <algorithm>

#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

const char* observe_point_name(ObservePoint p) {
  switch (p) {
    case ObservePoint::BlockInput: return "block_input";
    case ObservePoint::MixerInput: return "mixer_input";
    case ObservePoint::MixerOutput: return "mixer_output";
    case ObservePoint::MlpActivation: return "mlp_activation";
    case ObservePoint::AttentionHeads: return "attention_heads";
    case ObservePoint::MambaX: return "mamba_x";
    case ObservePoint::FinalNorm: return "final_norm";
    case ObservePoint::MoeSharedActivation: return "moe_shared_activation";
  }
  return "?";
}

void ObserverList::remove(Observer* o) {
  observers_.erase(std::remove(observers_.begin(), observers_.end(), o), observers_.end());
}

}  // namespace minipuzzle
