// Language-model quality of a model on a dataset: mean next-token
// cross-entropy, perplexity, top-1 accuracy over consecutive windows.
#pragma once

#include <cstdint>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/streamed_model.h"

namespace minipuzzle {

struct EvalOptions {
  int64_t seq_len = 2048;
  int64_t batch = 1;
  uint64_t max_tokens = 0;  // predicted tokens to use at most (0 = the whole dataset)
  // Forward passes over the first batch before the clock starts, results
  // dropped (kernel loading, library handles, allocator growth): `seconds`
  // then times the steady state. The scores never include them.
  int64_t warmup_batches = 0;
};

struct EvalResult {
  double loss = 0;        // nats per token
  double perplexity = 0;  // exp(loss)
  double accuracy = 0;    // top-1 next-token accuracy
  uint64_t tokens = 0;    // predicted tokens
  uint64_t windows = 0;
  double seconds = 0;  // the scored passes, after any warm-up
};

// Tokens whose loss is taken together: one LM-head slice's fp32 logits for
// them are 64 MiB at most (kLmHeadSliceRows columns), whatever the batch.
constexpr int64_t kEvalChunkRows = (int64_t{1} << 24) / kLmHeadSliceRows;

// fp32 logit memory evaluate() holds for a batch of `tokens`: one slice's
// logits for at most kEvalChunkRows tokens and one temporary (for the plan's
// working memory: a batch's logits are never whole).
uint64_t eval_logit_bytes(int64_t vocab, int64_t tokens);

// Windows: sequential_windows(total, seq_len, max_tokens / seq_len) of the
// flat token stream; InputError when the dataset is shorter than one window.
// The loss is summed per chunk of kEvalChunkRows tokens in batch order, each
// token's log-sum-exp over the LM head's slices in order (never the whole
// [tokens x vocab] logits): deterministic, and equal to cross_entropy over
// whole rows up to fp32 rounding.
EvalResult evaluate(HybridLM& model, const IndexedDataset& data, const EvalOptions& opt);
// The same with the model's weights resident or streamed (streamed_model.h):
// bit-identical results.
EvalResult evaluate(ForwardModel& model, const IndexedDataset& data, const EvalOptions& opt);

}  // namespace minipuzzle
