// Activation statistics for the width axes (Minitron): each channel, neuron
// or head gets one number from its activations on calibration data,
// aggregated over the sequence, then over the samples. Accumulated in fp64
// across batches; no activation is kept.
//
//   FFN neuron j       : MlpActivation[..., j]          (relu(up x)^2, input of down_proj)
//   embedding channel d: MixerInput[..., d] of every layer + FinalNorm[..., d], summed
//   attention head h   : || o_proj[:, head h] . AttentionHeads[..., h, :] ||_2 per token: the
//                        norm of the head's output as it reaches the residual stream (computed
//                        through the head's o_proj Gram matrix, so a head whose o_proj columns
//                        are zero scores 0 and heads are compared on what they contribute)
//   Mamba channel c    : MambaX[..., c]                 (x segment of in_proj)
//   Mamba head h       : L2 of its channel scores; head dim p: L2 over heads of (h, p)
//
// Sequence aggregation of a sample's values a_t (magnitudes |a_t|):
//   mean = (1/L) sum_t |a_t|,  l2 = sqrt(sum_t a_t^2),  max = max_t |a_t|
// Batch aggregation of the per-sample values s_b (over all N samples seen):
//   mean = (1/N) sum_b s_b,  l2 = sqrt(sum_b s_b^2),  var = (1/N) sum_b (s_b - mean)^2
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/observers.h"

namespace minipuzzle {

enum class SeqAggregation { Mean, L2, Max };
enum class BatchAggregation { Mean, L2, Var };

struct Aggregation {
  SeqAggregation seq = SeqAggregation::Mean;
  BatchAggregation batch = BatchAggregation::L2;
  // "seq=mean,batch=l2" (either part may be omitted); InputError otherwise.
  static Aggregation parse(const std::string& text);
  std::string to_string() const;
};

// [b, L, C] -> [b, C] in fp64, by `a`.
torch::Tensor aggregate_sequence(const torch::Tensor& values, SeqAggregation a);

// Running aggregate of per-sample vectors over batches.
class BatchAccumulator {
 public:
  void add(const torch::Tensor& per_sample);  // [b, C]
  torch::Tensor result(BatchAggregation a) const;  // [C] fp64
  int64_t samples() const { return samples_; }

 private:
  torch::Tensor sum_, sum_sq_;
  int64_t samples_ = 0;
};

class WidthStatistics : public Observer {
 public:
  // Keeps the o_proj parameters of `model` (for the attention-head scores),
  // read when their layer is first observed.
  WidthStatistics(HybridLM& model, Aggregation aggregation);
  void observe(ObservePoint point, int64_t layer, const torch::Tensor& value) override;
  // Fills hidden, ffn, attention_heads and the mamba_* vectors of `scores`
  // (one entry per layer, empty for layers of another type).
  void fill(ImportanceScores& scores) const;

 private:
  ModelConfig cfg_;
  Aggregation agg_;
  std::map<std::pair<int, int64_t>, BatchAccumulator> acc_;  // (point, layer)
  std::map<int64_t, torch::Tensor> o_proj_;                   // layer -> the o_proj parameter
  std::map<int64_t, torch::Tensor> o_proj_gram_;              // layer -> [heads, hd, hd] fp64, on first use
  const torch::Tensor& o_proj_gram(int64_t layer);
};

}  // namespace minipuzzle
