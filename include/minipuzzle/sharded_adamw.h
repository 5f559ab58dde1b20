// AdamW sharded over data-parallel ranks (DeepSpeed ZeRO stages 1 and 2,
// laid out as Megatron's distributed optimizer): the trainable parameters
// end to end in one flat order (flat_parameter_layout.h), each rank owning a
// contiguous 1/N of it. A rank keeps the fp32 master (when the parameters
// are not fp32) and the two moments of its range only, steps its range with
// adamw_update.h's arithmetic (so every element gets the update the
// unsharded AdamW gives it), then the updated parameters are all-gathered.
//
//   Both levels reduce the step's accumulated gradients into each owner's
//   range bucket by bucket during the last micro-batch's backward, as the
//   unsharded all-reduce does (the same sums in the same order, so the same
//   weights: reducing every micro-batch would sum in another order, and
//   AdamW turns the rounding of gradients that nearly cancel into visible
//   weight differences, eps being 1e-8).
//   --shard optimizer: every rank keeps its full-size gradients (only its
//     range of them is summed).
//   --shard gradients: the owner's range goes into a gradient shard and each
//     parameter's .grad is dropped once its buckets are copied out: after
//     the last backward no rank holds a full-size gradient. (Between the
//     micro-batches of one step the local gradients are still whole.)
//
//   --shard parameters: as `gradients`, but the parameters themselves live
//     only as this rank's range (sharded_parameters.h's shard): the update
//     steps that range in place, no all-gather follows (the next forward
//     gathers unit by unit), and the gradients arrive from the units'
//     reduces (accumulate_gradient), once per micro-batch. The layout
//     holds every weight, frozen ones too (an MoE router's correction
//     bias: sharded and gathered like the rest); those are never stepped.
//
// Clipping uses the global norm: each rank's sum of squares over its range,
// summed over ranks in one all-reduce. Weight decay follows the parameter an
// element belongs to (AdamW::decays). One rank alone (no process group)
// runs the same code with no collective.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "minipuzzle/adamw.h"
#include "minipuzzle/data_parallel.h"
#include "minipuzzle/flat_parameter_layout.h"
#include "minipuzzle/overlapped_shard_reduce.h"
#include "minipuzzle/training_memory_plan.h"

namespace minipuzzle {

class ShardedAdamW {
 public:
  // level: Optimizer or Gradients (parameters must be contiguous), or
  // Parameters with `parameter_shard`: this rank's range of the weights,
  // flat, in the parameters' dtype (the parameters are placeholders).
  ShardedAdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, AdamWOptions options,
               DataParallel& dp, ShardLevel level, torch::Tensor parameter_shard = {});
  ShardedAdamW(const ShardedAdamW&) = delete;
  ShardedAdamW& operator=(const ShardedAdamW&) = delete;

  ShardLevel level() const { return level_; }
  const FlatParameterLayout& layout() const { return layout_; }
  // Around the step's last backward: arm() before it (the reduce overlaps
  // it), finish() after it (without arm(): the whole reduce then).
  void arm() {
    if (level_ != ShardLevel::Parameters) reduce_.arm();
  }
  void finish();
  // Parameters: adds an owner's mean gradient of [lo, lo + mean.numel())
  // (a unit's reduce, sharded_parameters.h) into the gradient shard.
  void accumulate_gradient(int64_t lo, const torch::Tensor& mean);

  // As AdamW's: the global norm over every rank's range (one all-reduce).
  torch::Tensor clip_grad_norm_on_device(double max_norm);
  // Steps this rank's range, then all-gathers the updated parameters.
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return step_; }

  struct StateBytes {
    int64_t master = 0, moments = 0, gradients = 0, buckets = 0;
    // The most parameter-gradient bytes alive at once during the last
    // (armed) backward, plus the gradient shard.
    int64_t gradients_peak = 0;
  };
  // What this rank holds: master, moments and (gradients) its gradient shard
  // plus whatever parameter gradients exist now; buckets: the most fp32
  // bucket bytes the last step's reduce or all-gather held at once.
  StateBytes state_bytes() const;

  // This rank's range of the state as flat fp32 tensors ("exp_avg",
  // "exp_avg_sq" and, when the parameters are not fp32, "master"), copied to
  // the host, and back from a checkpoint's files (sharded_checkpoint.h; its
  // manifest already checked): this rank's range out of every old rank's file
  // that overlaps it, so the old world size may differ. InputError naming the
  // file when one does not fit.
  AdamW::State snapshot() const;
  static void write_state(const AdamW::State& state, const FlatParameterLayout& layout, int rank,
                          const std::filesystem::path& file);
  void load(const std::filesystem::path& dir, const nlohmann::json& manifest);

 private:
  void bind_gradients();
  void all_gather_parameters();

  DataParallel& dp_;
  ShardLevel level_;
  AdamWOptions opt_;
  std::vector<torch::Tensor> params_;  // index-aligned with layout_.entries
  FlatParameterLayout layout_;
  torch::Tensor master_, exp_avg_, exp_avg_sq_;  // this rank's range (master undefined for fp32 parameters)
  torch::Tensor grad_shard_;                     // gradients: this rank's range of the mean gradient
  std::vector<FlatParameterLayout::Piece> mine_;  // the parameters' parts in this rank's range
  std::unique_ptr<AdamWUpdate> update_;           // over views of those parts
  OverlappedShardReduce reduce_;
  double max_grad_norm_ = 0;
  torch::Tensor grad_sum_of_squares_;
  int64_t step_ = 0;
  int64_t gather_bytes_ = 0;
};

}  // namespace minipuzzle
