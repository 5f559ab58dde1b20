// How far one model's next-token predictions are from another's on the same
// tokens: KL, both cross-entropies, accuracy and greedy agreement. Used by
// layer scoring (full vs one layer dropped), candidate ranking (parent vs
// pruned) and distillation eval (teacher vs student).
//
// Works from the final normed hidden states and the models' LM heads, in
// chunks of tokens, so [tokens x vocab] fp32 logits of both models are
// never in memory at once (at most ~64 MB per model per chunk).
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

struct LogitComparison {
  double kl_sum = 0;         // sum over tokens of KL(reference || other), nats
  double ce_reference_sum = 0;  // sum of the reference model's cross-entropy on targets
  double ce_other_sum = 0;
  uint64_t other_correct = 0;  // other's argmax == target
  uint64_t agree = 0;          // other's argmax == reference's argmax
  uint64_t tokens = 0;

  LogitComparison& operator+=(const LogitComparison& o);
};

// normed_*: [..., D] outputs of final_norm of each model (same leading
// shape); targets: [...] int64 next tokens. `reference` and `other` may be
// the same model (layer scoring) or different widths (pruned vs parent).
LogitComparison compare_logits(HybridLM& reference, const torch::Tensor& normed_reference, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets);

// The same with the reference's log-probabilities given ([N, V] fp32, N =
// number of target tokens): callers comparing many models against one
// reference (layer scoring) compute them once.
LogitComparison compare_logits(const torch::Tensor& reference_logprobs, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets);

}  // namespace minipuzzle
