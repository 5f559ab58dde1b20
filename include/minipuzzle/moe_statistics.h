// Importance statistics of MoE (`E`) layers, gathered over the calibration
// windows from what the layer shows its observers (observers.h, MoeRouting):
//
//   per routed expert e (over every token of every window):
//     frequency   slots routed to e / tokens            (the router's load; sums to k)
//     weight      mean routing weight over e's slots    (0 when never chosen)
//     importance  mean over e's slots of || w * expert_e(x) ||_2: the norm of
//                 the expert's weighted output per routed token (ModelOpt's
//                 measure; in the latent space when the layer has one)
//   per expert-FFN neuron j: relu(up_e x)^2[j] of every expert e, aggregated
//     over each sample's sequence (tokens not routed to e count as 0) and
//     summed over experts, then over samples: one width shared by every
//     expert, as prune keeps it (same aggregations as FFN width)
//   per shared-expert neuron: MoeSharedActivation, as an MLP's neurons
//
// Sums are fp64 and taken batch by batch in order, so a streamed run (same
// batches, layer-major) adds the same numbers in the same order.
#pragma once

#include <torch/torch.h>

#include <map>

#include "minipuzzle/importance_scores.h"
#include "minipuzzle/model_config.h"
#include "minipuzzle/observers.h"
#include "minipuzzle/width_statistics.h"

namespace minipuzzle {

class MoeStatistics : public Observer {
 public:
  MoeStatistics(const ModelConfig& config, Aggregation aggregation);
  void observe(ObservePoint point, int64_t layer, const torch::Tensor& value) override;
  void observe_moe(int64_t layer, const MoeRouting& routing) override;
  // Fills the moe_* vectors of `scores` (one entry per layer, empty for
  // layers that are not E).
  void fill(ImportanceScores& scores) const;

 private:
  struct Layer {
    torch::Tensor slots, weight_sum, norm_sum;  // [E] fp64
    int64_t tokens = 0;
    BatchAccumulator neurons, shared;
  };
  ModelConfig cfg_;
  Aggregation agg_;
  std::map<int64_t, Layer> layers_;
};

}  // namespace minipuzzle
