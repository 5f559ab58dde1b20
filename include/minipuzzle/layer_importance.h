// Drop-one layer importance: for every layer i, how much the model's output
// changes when layer i is removed (its block becomes the identity).
//
// Cost: the full forward caches the residual stream entering every layer
// (n_layers x [b, L, D] in the model dtype); dropping layer i then runs only
// layers i+1..n-1 from the cached input of layer i. Per batch that is one
// full pass plus n(n-1)/2 layer evaluations, i.e. about one suffix pass per
// layer (~ (n+1)/2 full forwards in all), instead of n full forwards.
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
  LayerImportance(const ModelConfig& config, LayerMetrics metrics);

  // One batch: inputs/targets [b, L] int64 on the model's device. The full
  // pass runs with the model's observers attached (so width statistics can
  // listen); the drop-one passes run with them detached.
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
  // One set of logit buffers for every dropped layer of every batch.
  LogitScratch scratch_;
};

}  // namespace minipuzzle
