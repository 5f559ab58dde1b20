// Drop-one layer importance: for every layer i, how much the model's output
// changes when layer i is removed (its block becomes the identity).
//
// Cost: layer-major, block by block. Entering block j, each batch holds the
// full residual stream and one stream per dropped layer i < j (the stream
// that skipped i); block j runs on all of them, and the stream entering j
// becomes "j dropped". Per batch that is one full pass plus n(n-1)/2 layer
// evaluations, i.e. about one suffix pass per layer (~ (n+1)/2 full
// forwards in all), instead of n full forwards, with n+1 states of
// [b, L, D] in the model dtype. Each block's weights are needed once per
// group of batches, which is what lets a streamed model (streamed_model.h)
// score with one read of the weights per group.
//
// Metrics (per layer, averaged over all tokens of all batches):
//   mse  : mean squared difference of the norm_f output (what lm_head sees)
//   kl   : KL(full || dropped) of the next-token distributions, nats/token
//   loss : LM loss (cross-entropy) of the dropped model minus the full model's
//   bi   : block influence 1 - cos(block input, block output), from the full pass
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/streamed_model.h"

namespace minipuzzle {

struct LayerMetrics {
  bool mse = true, kl = true, loss = true, bi = true;
  // "mse,kl,loss,bi" (any non-empty subset); InputError otherwise.
  static LayerMetrics parse(const std::string& text);
  std::vector<std::string> names() const;
  bool needs_logits() const { return kl || loss; }
};

class LayerImportance {
 public:
  // head_pass_bytes: fp32 logits gathered per pass over the LM head when a
  // streamed model reads its head from the checkpoint on every pass (each
  // pass reads it once); a resident head computes them a chunk at a time.
  // keep_full_logprobs_bytes: the full model's log-probabilities of a batch
  // are kept for every dropped layer up to this size, else recomputed per
  // chunk beside each dropped layer's (the same bits either way).
  LayerImportance(const ModelConfig& config, LayerMetrics metrics, uint64_t head_pass_bytes = uint64_t{1} << 30,
                  uint64_t keep_full_logprobs_bytes = uint64_t{1} << 30);

  // A group of batches: inputs/targets [b, L] int64 on the model's device,
  // in order. The full pass runs with the model's observers attached (so
  // width statistics can listen); the drop-one passes run with them
  // detached. Resident and streamed models give the same bits.
  void add_group(ForwardModel& model, const std::vector<torch::Tensor>& inputs,
                 const std::vector<torch::Tensor>& targets);
  // One batch of a resident model.
  void add_batch(HybridLM& model, const torch::Tensor& inputs, const torch::Tensor& targets);

  // metric -> one value per layer.
  std::map<std::string, std::vector<float>> result() const;
  double full_model_loss() const;  // nats/token of the unpruned model (when loss/kl measured)
  uint64_t tokens() const { return tokens_; }

 private:
  ModelConfig cfg_;
  LayerMetrics metrics_;
  std::vector<double> mse_, kl_, loss_, bi_;
  double full_loss_ = 0;
  uint64_t tokens_ = 0, elements_ = 0;
  uint64_t head_pass_bytes_;
  uint64_t keep_full_logprobs_bytes_;
  // One set of logit buffers for every dropped layer of every batch, and
  // the logits of a pass over the head.
  LogitScratch scratch_;
  torch::Tensor head_pass_pool_;

  void compare_dropped(ForwardModel& model, const torch::Tensor& normed_full, std::vector<torch::Tensor>& normed_dropped,
                       const torch::Tensor& targets);
};

}  // namespace minipuzzle
