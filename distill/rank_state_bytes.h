// The bytes of the training state each rank actually holds, by the kinds of
// the distillation planner (training_memory_plan.h), for metrics.jsonl's
// `state_bytes`: the planner's figures are checked against these (internal
// to distill/).
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "minipuzzle/adamw.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

// [{"rank": 0, "teacher_weights": B, "student_weights": B, "gradients": B,
//   "master": B, "moments": B, "buckets": B, "gradients_peak": B, "gathered_blocks": B}, ...] in rank order: each kind
// is the sum of numel x element size of the tensors of that kind on that
// rank (buckets: the fp32 bucket buffers the step's all-reduce held at
// once). A collective: every rank must call it at the same point.
// master, moments: the optimizer's (AdamW::state_bytes, or a sharded
// optimizer's range); extra_gradients: gradient bytes held outside the
// parameters' .grad (a sharded optimizer's gradient shard).
// gradients_peak: the most gradient bytes held at once during the step's
// backward (sharded levels; otherwise the gradients' own bytes).
struct OptimizerBytes {
  int64_t master = 0, moments = 0, extra_gradients = 0, gradients_peak = -1;
};
// Weights held other than as the models' own tensors (--shard parameters:
// the parameters are placeholders): this rank's ranges, and the most bytes
// of gathered units held at once (`gathered_blocks`); -1: count the
// model's tensors.
struct HeldWeights {
  int64_t teacher = -1, student = -1, gathered = 0;
};
nlohmann::json rank_state_bytes(HybridLM* teacher, HybridLM& student, const OptimizerBytes& optimizer,
                                int64_t bucket_bytes, DataParallel& dp, const HeldWeights& held = {});

}  // namespace minipuzzle
