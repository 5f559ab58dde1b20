// The distillation memory planner: each rank's bytes by kind for a
// teacher -> student distillation at a world size and shard level, from the
// configs alone (before anything loads), and the smallest world size or
// shard level that fits a device. Plain C++ (no LibTorch).
//
// Shard levels (DeepSpeed ZeRO's stages 1-3). T, S: teacher and student
// parameters; N ranks; e: compute dtype bytes (2 bf16, 4 fp32); m: fp32
// master bytes, 4 when e < 4 and 0 in fp32 (fp32 parameters are their own
// master, adamw.h), so in both dtypes the student costs e + e + m + 8 = 16
// bytes per parameter:
//
//   level       teacher  student  gradients  master  moments  buckets
//   none        eT       eS       eS         mS      8S       4S (fp32, while the all-reduce runs)
//   optimizer   eT       eS       eS         mS/N    8S/N     two fp32 buckets in flight
//   gradients   eT       eS       eS/N       mS/N    8S/N     two fp32 buckets in flight
//   parameters  eT/N     eS/N     eS/N       mS/N    8S/N     two fp32 buckets in flight
//               + gathered units (sharded_parameters.h), e bytes each: the
//                 most of two neighbouring units of the student (one runs while
//                 the next is gathered), or the teacher's two, or the teacher's
//                 head (held for the loss) + the student's two; buckets: two
//                 fp32 buckets of at most bucket_bytes reducing, cut along each
//                 unit in backward's order (any N, also 1)
//
// At e = 2 that is the 2T + 16S, 2T + 4S + 12S/N and (2T + 16S)/N.
// The trainer runs every level (sharded_adamw.h, sharded_parameters.h;
// DESIGN.md, "Scale: where weights live"). The optimizer and gradients
// levels reduce-scatter the gradients bucket by bucket into each rank's
// fp32 shard (one bucket reducing while the next is filled) and all-gather
// the updated weights the same way; parameters reduces unit by unit and
// gathers a unit before it runs. One rank alone shards nothing and runs no
// collective (at parameters it still gathers: a copy).
//
// Why the buckets of `none` are 4S: the trainer's gradient all-reduce
// (overlapped_all_reduce.cpp) flattens every bucket into an fp32 buffer as
// backward finishes it and keeps all of them until the step's sums are
// written back, so at the end of backward a full fp32 copy of the gradients
// exists; in bf16 the last bucket's per-tensor fp32 copies exist too while
// they are concatenated (bucket_scratch). Without overlap
// (`--no-overlap-all-reduce`) one bucket at a time. One rank alone runs no
// collective: 0.
//
// Activations (training_activations.h): the blocks' saved tensors for one
// micro-batch, or with activation checkpointing (always at `parameters`,
// whose blocks are recomputed in backward) every block's input plus one
// block's recompute; each block's forward transient and backward
// scratch, walked layer by layer for the highest point of the forward and
// of the backward; the online teacher's final hidden states, which live
// through the student's forward and the loss. They do not depend on N
// (each rank runs its own micro-batch).
//
// Peak: the persistent state plus the largest of phases that do not
// overlap: the micro-batch (the largest of the teacher's forward, the
// student's forward, the KD loss and the backward, plus a teacher-cache
// batch: step_peak), the end of the step's backward (communication buckets:
// by then the activations are freed), and the optimizer step's scratch (the
// reference AdamW's fp32 temporaries of the largest tensor; none for the
// fused CUDA kernel). On the CPU the micro-batch's figure is within 3% of
// what LibTorch's allocator holds (tests/distill/activation_memory_test.cpp).
// The CUDA context, NCCL's own buffers and allocator fragmentation are not
// counted: give --device-memory some headroom.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/memory_model.h"
#include "minipuzzle/model_config.h"
#include "minipuzzle/training_activations.h"

namespace minipuzzle {

enum class ShardLevel { None, Optimizer, Gradients, Parameters };

const char* shard_level_name(ShardLevel level);  // "none", "optimizer", "gradients", "parameters"
// InputError "<what>: unknown shard level 'x'; expected none, optimizer, gradients or parameters".
ShardLevel parse_shard_level(const std::string& text, const std::string& what = "--shard");
constexpr ShardLevel kShardLevels[] = {ShardLevel::None, ShardLevel::Optimizer, ShardLevel::Gradients,
                                       ShardLevel::Parameters};

// A distillation job as the planner sees it.
struct TrainingJob {
  ModelConfig student;
  // Loaded on every rank: the online teacher, or the teacher beside a cache
  // (then it serves only evaluation, but its weights are held all the same).
  std::optional<ModelConfig> teacher;
  int64_t cache_top_k = 0;  // > 0: a teacher cache (k logits per token) feeds the loss
  int64_t seq_len = 2048;
  int64_t micro_batch = 1;
  bool activation_checkpointing = false;
  Precision dtype = Precision::Bf16;  // compute dtype of both models: fp32 or bf16
  TrainingOps ops = TrainingOps::CudaKernels;
  int64_t kd_chunk_tokens = 0;  // 0: kd_loss's auto size
  int64_t bucket_bytes = 25 << 20;
  bool overlap_all_reduce = true;

  // InputError on a dtype other than fp32/bf16, non-positive sizes, no
  // teacher at all, or a teacher of another vocabulary.
  void validate() const;
};

// Bytes on one rank, by kind.
struct RankBytes {
  double teacher_weights = 0;
  double student_weights = 0;
  double gathered_blocks = 0;  // parameters level: the all-gathered units
  double gradients = 0;
  double master = 0;   // fp32 master weights
  double moments = 0;  // AdamW's two fp32 moments
  double activations = 0;  // ActivationBreakdown::total(): every part, as if live together
  double kd_loss = 0;      // KdLossBytes::total()
  double teacher_cache_batch = 0;  // one micro-batch of cached top-k logits: fp32 values, int64 ids, fp32 rest
  double buckets = 0;              // communication buckets: the fp32 buffers held at once
  double bucket_scratch = 0;       // bf16: a bucket's per-tensor fp32 copies while they are concatenated
  double optimizer_scratch = 0;    // the reference AdamW's temporaries of the largest tensor
  // The forward/loss/backward phase's peak: the largest of the teacher's
  // forward, the loss and the student's backward (ActivationBreakdown), at
  // most activations + kd_loss + teacher_cache_batch.
  double step_peak = 0;

  double persistent() const {
    return teacher_weights + student_weights + gathered_blocks + gradients + master + moments;
  }
  // persistent() + the largest of step_peak, buckets + bucket_scratch and
  // optimizer_scratch.
  double peak() const;
};

// Activations in detail: per block type, kept for backward without and with
// checkpointing, at the job's sequence length and micro-batch.
struct BlockActivations {
  LayerType type = LayerType::Mamba;
  int64_t count = 0;        // blocks of this type in the student
  double saved = 0;         // without checkpointing
  double checkpointed = 0;  // with: the block's input
  double forward_transient = 0;
  double backward_scratch = 0;
};

struct ActivationBreakdown {
  std::vector<BlockActivations> blocks;  // the student's block types present
  double kept = 0;       // over all blocks, at the job's checkpointing setting
  double recompute = 0;  // checkpointing: the widest block's saved tensors while it is recomputed
  double transient = 0;  // the largest forward transient or backward scratch of a block
  double final_norm = 0;
  double teacher_hidden = 0;   // the online teacher's final normed hidden states, live until the loss ends
  double teacher_forward = 0;  // the teacher's widest block while it runs (no grad), before the student's pass
  double tokens = 0;           // the micro-batch's int64 windows
  // Walking the student's layers in order: the highest point of its
  // forward (what earlier blocks keep + this block's saved tensors and
  // transient) and of its backward (what blocks up to this one keep + this
  // block's recompute and scratch).
  double forward_peak = 0, backward_peak = 0;
  // Every part as if live together (an upper bound; the plan's step_peak
  // takes the phases instead).
  double total() const {
    return kept + recompute + transient + final_norm + teacher_hidden + teacher_forward + tokens;
  }
};

struct TrainingMemoryPlan {
  int world_size = 1;
  ShardLevel shard = ShardLevel::None;
  ParamCounts student_params;
  std::optional<ParamCounts> teacher_params;
  RankBytes bytes;
  ActivationBreakdown activations;
  KdLossBytes kd;
  double largest_bucket = 0;  // fp32 bytes of the largest gradient bucket

  bool fits(double device_bytes) const { return bytes.peak() <= device_bytes; }
};

// InputError from job.validate() or a world size < 1.
TrainingMemoryPlan plan_training_memory(const TrainingJob& job, int world_size, ShardLevel shard);

// The smallest world size in [1, max_world_size] whose plan at `shard`
// fits `device_bytes`; nullopt when none does (at `none` more ranks never
// help: each holds everything, plus the buckets).
std::optional<int> smallest_world_size(const TrainingJob& job, ShardLevel shard, double device_bytes,
                                       int max_world_size = 4096);
// The first level, in the order none < optimizer < gradients < parameters,
// whose plan at `world_size` fits; nullopt when none does.
std::optional<ShardLevel> smallest_shard_level(const TrainingJob& job, int world_size, double device_bytes);

// The student's parameter tensors in the trainer's order (named_parameters:
// a module's own parameters before its children's), as element counts: the
// gradient buckets are cut in this order. Only trained tensors: an MoE
// router's e_score_correction_bias has no gradient and is left out.
std::vector<int64_t> parameter_numels_in_order(const ModelConfig& c);
// The elements of each unit of --shard parameters: the embedding, each
// block (an MoE block with its frozen correction bias), the head (norm_f +
// lm_head).
std::vector<int64_t> parameter_unit_numels(const ModelConfig& c);
// The fp32 bytes of each gradient bucket as make_buckets cuts them.
std::vector<double> gradient_bucket_bytes(const ModelConfig& c, int64_t bucket_bytes);

}  // namespace minipuzzle
