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
#include <vector>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle {
class ForwardModel;
}

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

// compare_logits for models whose LM heads stream (ForwardModel,
// streamed_model.h), where reading a head per chunk would read it thousands
// of times: chunks are gathered until their logits (both models') fill
// `budget` bytes, then one pass over each head computes them all, and each
// chunk is compared in the order it was added. Per chunk the products, the
// log_softmax and the sums are compare_logits' own, so the same bits.
class HeadPassComparison {
 public:
  // reference == nullptr: `other` was cut from its checkpoint by recipes and
  // the reference is that checkpoint's own model, whose head slices come
  // beside `other`'s in the same read (candidate ranking against its parent).
  HeadPassComparison(ForwardModel* reference, ForwardModel& other, uint64_t budget_bytes);
  // Rows [n, D] of the reference's and other's final normed hidden states,
  // targets [n]; its sums go to `sums` (kept alive until flush()).
  void add(const torch::Tensor& reference_rows, const torch::Tensor& other_rows, const torch::Tensor& targets,
           ComparisonSums* sums);
  // Computes and compares every pending chunk.
  void flush();

 private:
  struct Unit {
    torch::Tensor a, b, t;
    ComparisonSums* sums;
  };
  ForwardModel* reference_;
  ForwardModel& other_;
  int64_t vocab_;
  uint64_t budget_;
  bool gather_;  // only worth it when a pass reads a head
  std::vector<Unit> pending_;
  uint64_t pending_values_ = 0;
  torch::Tensor pool_;
  LogitScratch scratch_;
};

// The comparison of `other` with a reference over whole batches, streamed:
// `other` runs layer-major over groups of its plan's size (inputs [b, L]),
// each group's chunks compared in head passes against `reference_hidden`
// (the reference's final normed states of the same batches). Summed over
// batches as per-batch compare_logits calls sum, so the same bits.
LogitComparison compare_with_head_passes(ForwardModel* reference, const std::vector<torch::Tensor>& reference_hidden,
                                         ForwardModel& other, const std::vector<torch::Tensor>& inputs,
                                         const std::vector<torch::Tensor>& targets, uint64_t budget_bytes);

// Logits (bytes, fp32) one pass over a streamed LM head gathers, for every
// command that compares logits a pass at a time (a HeadPassComparison, and
// score's drop-one kl/loss): a quarter of the head's bytes, at most 1 GiB (on
// the CPU the products of a pass then take ~10x longer than reading the head
// from the page cache).
uint64_t comparison_head_pass_bytes(const ModelConfig& config, torch::ScalarType dtype);

// Device memory of a streamed comparison beyond the models' forwards, at
// batches of `rows` tokens: the four chunk buffers and a pass's logits.
uint64_t comparison_working_bytes(const ModelConfig& config, torch::ScalarType dtype, int64_t rows);

}  // namespace minipuzzle
