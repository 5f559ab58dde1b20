// How far one model's next-token predictions are from another's on the same
// tokens: KL, both cross-entropies, accuracy and greedy agreement. Used by
// layer scoring (full vs one layer dropped), candidate ranking (parent vs
// pruned) and distillation eval (teacher vs student).
//
// Works from the final normed hidden states and the models' LM heads, in
// chunks of tokens, so [tokens x vocab] fp32 logits of both models are
// never in memory at once (~64 MB per buffer per chunk, in a LogitScratch).
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

// The chunk-sized [rows, V] fp32 buffers a comparison works in, kept for
// as long as this lives. Each is ~64 MB, over glibc's largest mmap threshold
// (32 MiB): a fresh tensor per chunk would be a fresh mapping whose pages
// fault in (zeroed by the kernel) again every time, which is where layer
// scoring, one comparison per dropped layer, spent its system time.
class LogitScratch {
 public:
  // Buffer `slot` (0..3) viewed as [rows, vocab] on `device`.
  torch::Tensor view(int slot, int64_t rows, int64_t vocab, const torch::Device& device);

 private:
  torch::Tensor buffers_[4];
};

// Tokens per comparison chunk: [rows, V] fp32 is 64 MB whatever the vocabulary.
int64_t comparison_chunk_rows(int64_t vocab);

// One comparison's sums, fed chunk by chunk and kept on the models' device
// until result() reads them once (on a GPU the host then queues every chunk
// without waiting for any).
class ComparisonSums {
 public:
  explicit ComparisonSums(const torch::Device& device);
  // Log-probabilities of both models [n, V], targets [n]; `work` and
  // `difference` are free [n, V] buffers.
  void add_chunk(const torch::Tensor& lp, const torch::Tensor& lq, const torch::Tensor& tt, torch::Tensor work,
                 torch::Tensor difference);
  LogitComparison result() const;

 private:
  torch::Tensor sums_;
  uint64_t tokens_ = 0;
};

// normed_*: [..., D] outputs of final_norm of each model (same leading
// shape); targets: [...] int64 next tokens. `reference` and `other` may be
// the same model (layer scoring) or different widths (pruned vs parent).
// Without `scratch`, the buffers live for this call only.
LogitComparison compare_logits(HybridLM& reference, const torch::Tensor& normed_reference, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets,
                               LogitScratch* scratch = nullptr);

// The same with the reference's log-probabilities given ([N, V] fp32, N =
// number of target tokens): callers comparing many models against one
// reference (layer scoring) compute them once.
LogitComparison compare_logits(const torch::Tensor& reference_logprobs, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets,
                               LogitScratch* scratch = nullptr);

}  // namespace minipuzzle
