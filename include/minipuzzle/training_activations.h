// Activation memory of training, from a ModelConfig alone: the bytes that
// autograd keeps for backward from one block's forward, the extra bytes a
// block's backward needs while it runs, and the KD loss's working set.
// Plain C++ (no LibTorch): the distillation planner (training_memory_plan.h)
// adds these up per rank before anything loads.
//
// The figures are not a model of "a transformer" but of OUR forward: each
// term in training_activations.cpp names the op whose autograd node keeps
// the tensor (linear keeps its input, relu its output, silu its input, the
// SSD reference its per-chunk decay and C.B matrices, ...), so a change to
// the model that keeps more must change a term here. On the CPU they are
// checked against the bytes the allocator actually holds
// (tests/distill/activation_memory_test.cpp); the CUDA variants follow the
// saved tensors of our autograd functions (src/cuda_ops/) and have not yet
// been checked against a GPU allocator.
#pragma once

#include <cstdint>

#include "minipuzzle/model_config.h"

namespace minipuzzle {

// Which implementation each op runs, as kernel_dispatch.h chooses it.
enum class TrainingOps {
  Reference,       // every op its LibTorch reference: the CPU, or MINIPUZZLE_REFERENCE_OPS=1
  CudaKernels,     // CUDA today: conv1d+SiLU and gated-norm kernels, the SSD scan's reference
  CudaKernelsSsd,  // CUDA with MINIPUZZLE_SSD_KERNEL=1: the SSD scan's kernels too
};

const char* training_ops_name(TrainingOps ops);  // "reference", "cuda-kernels", "cuda-kernels+ssd"

struct ActivationSetting {
  int64_t sequences = 1;    // windows per forward (--micro-batch)
  int64_t seq_len = 2048;   // tokens per window
  int64_t element_bytes = 2;  // the compute dtype: 2 (bf16) or 4 (fp32)
  TrainingOps ops = TrainingOps::CudaKernels;
  int64_t tokens() const { return sequences * seq_len; }
};

// Bytes kept for backward by a block of type `t` (its pre-norm included).
double block_saved_bytes(const ModelConfig& c, LayerType t, const ActivationSetting& s);
// What a checkpointed block keeps: its input only.
double block_input_bytes(const ModelConfig& c, const ActivationSetting& s);
// Bytes a block's forward holds at its peak beyond what it saves and its
// output: intermediates that die before it returns.
double block_forward_transient_bytes(const ModelConfig& c, LayerType t, const ActivationSetting& s);
// Bytes a block's backward allocates beyond what the forward saved, at
// its peak (the gradients of its largest intermediates live together).
double block_backward_scratch_bytes(const ModelConfig& c, LayerType t, const ActivationSetting& s);
// The final norm's saved tensors (the KD loss's input is counted there).
double final_norm_saved_bytes(const ModelConfig& c, const ActivationSetting& s);

// The KD loss (kd_loss.h) over one micro-batch: what it holds from its
// forward until backward (the student's normed input, d loss / d normed,
// d loss / d lm_head in fp32 and in the weight dtype) and the scratch of
// one chunk of `chunk_tokens` tokens x vocab.
struct KdLossBytes {
  double held = 0;     // until the backward consumes it
  double chunk = 0;    // one chunk's logits, log-probabilities and gradient, freed per chunk
  int64_t chunk_tokens = 0;  // as the loss resolves 0 (auto) and caps it at the micro-batch
  double total() const { return held + chunk; }
};
// cache_top_k > 0: the loss reads a teacher cache of k logits per token
// (kd_loss_topk) instead of the teacher's lm_head.
KdLossBytes kd_loss_bytes(const ModelConfig& student, const ActivationSetting& s, int64_t chunk_tokens,
                          int64_t cache_top_k);

}  // namespace minipuzzle
