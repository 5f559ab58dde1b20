// The distillation loop (MiniPuzzle step 4): a student learns the teacher's
// next-token distributions on a dataset (logit-only forward KL at
// temperature 1 by default, as the paper), with AdamW, a warmup + cosine/WSD
// schedule, gradient clipping and accumulation, periodic evaluation and
// checkpoints that resume exactly.
//
// OUT_DIR layout:
//   run.json                      the options (a resume must match them)
//   metrics.jsonl                 one line per step (loss, kd, ce, lr, grad_norm, tokens/s)
//                                 and per evaluation ("eval": true)
//   checkpoints/step-00000100/    config.json + model.safetensors (Hub layout),
//                                 optimizer.safetensors, trainer_state.json;
//                                 sharded runs: optimizer-RRRRR-of-NNNNN.safetensors
//                                 per rank + optimizer_manifest.json instead;
//                                 each written as a whole, the last `keep_last` kept
//   final/                        the student after the last step (Hub layout)
//   report.md, loss.png, eval.png
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "minipuzzle/adamw.h"
#include "minipuzzle/kd_loss.h"
#include "minipuzzle/lr_schedule.h"
#include "minipuzzle/training_memory_plan.h"

namespace minipuzzle {

struct DistillOptions {
  std::string teacher, student, data, eval_data;
  // Offline teacher (`minipuzzle teacher-logits`): top-k logits of the
  // training windows. The teacher model is then optional: when given it is
  // used only for evaluation (KL, agreement); without it evaluation reports
  // the student's LM loss and accuracy only.
  std::string teacher_cache;
  // With both a teacher and a cache: the teacher's checkpoint_fingerprint
  // (importance_scores.h), checked against the cache's (empty: not checked).
  std::string teacher_config_hash, teacher_weights_hash;
  std::filesystem::path out;
  int64_t seq_len = 2048;
  int64_t micro_batch = 1;   // windows per forward/backward
  int64_t global_batch = 8;  // windows per optimizer step (a multiple of micro_batch)
  LrSchedule schedule;       // total_steps = optimizer steps
  AdamWOptions adamw;
  double clip_grad = 1.0;
  KdOptions kd;
  int64_t eval_every = 0;  // steps; 0 = only at the start and the end
  uint64_t eval_tokens = 1 << 16;
  int64_t save_every = 0;  // steps; 0 = only at the end (and on a signal)
  int64_t keep_last = 2;
  uint64_t seed = 1234;
  std::string dtype = "fp32";  // student compute dtype; the teacher runs in it too
  std::string device = "cpu";
  bool resume = false;
  int64_t stop_at_step = 0;  // > 0: stop after that step as if interrupted (tests, time-boxed runs)
  // No teacher at all: plain next-token cross-entropy (`minipuzzle train`:
  // a teacher, or a from-scratch baseline). teacher/teacher_cache must be empty.
  bool train_from_scratch = false;
  // Recompute each student block in backward instead of keeping its
  // activations (activation_checkpointing.h): less memory, ~1/3 more compute.
  bool activation_checkpointing = false;
  // Data-parallel: start each gradient bucket's all-reduce while backward
  // still runs (overlapped_all_reduce.h); the same sums as after it.
  bool overlap_all_reduce = true;
  // Data-parallel: what each rank keeps of the optimizer state
  // (sharded_adamw.h): None (all of it), Optimizer (ZeRO-1: master and
  // moments of its 1/N range), Gradients (ZeRO-2: also only its range of the
  // reduced gradient), Parameters (ZeRO-3: also only its range of the
  // weights, gathered unit by unit; sharded_parameters.h).
  // Sharded checkpoints: sharded_checkpoint.h.
  ShardLevel shard = ShardLevel::None;
  // Data-parallel: fp32 bytes per gradient bucket (and per all-gather chunk
  // of all ranks together at the sharded levels).
  int64_t bucket_bytes = 25 << 20;
};

struct DistillStatus {
  int64_t step = 0, steps = 0;
  uint64_t tokens = 0;
  double loss = 0, lr = 0, tokens_per_second = 0, seconds = 0;
};

struct DistillSummary {
  int64_t steps_done = 0;
  bool interrupted = false;  // stopped by a signal or stop_at_step; a checkpoint was saved
  std::filesystem::path last_checkpoint, final_dir;
  double first_eval_loss = 0, final_eval_loss = 0, final_eval_kl = 0;
};

// Set from a SIGINT/SIGTERM handler: the loop finishes the current step,
// checkpoints and returns with interrupted = true.
std::atomic<bool>& distill_stop_flag();

// Throws InputError on bad options, datasets, models that do not share a
// vocabulary, an OUT_DIR with checkpoints but no --resume (or a resume whose
// options differ).
DistillSummary run_distillation(const DistillOptions& options,
                                const std::function<void(const DistillStatus&)>& on_step = {});

// The checks run_distillation makes of the options alone, before it opens
// any dataset or model (InputError): for a caller that plans runs ahead, such
// as `compress --dry-run`.
void validate_distill_options(const DistillOptions& options);

}  // namespace minipuzzle
