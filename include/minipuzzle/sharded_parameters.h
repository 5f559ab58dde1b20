// The parameter-sharded level of distillation (--shard parameters, DeepSpeed
// ZeRO stage 3, FSDP's schedule on c10d collectives; DESIGN.md "Scale: where
// weights live", residency `sharded`).
//
// A model's weights live only as this rank's 1/N range of the flat layout
// (flat_parameter_layout.h: the range whose master and moments the rank
// already owns); the model's parameter tensors are placeholders (the right
// shape over one element) outside their use. The model is cut into units:
// the embedding, each block, and the head (norm_f + lm_head). A unit is
// gathered just before it runs (one broadcast from each rank whose range it
// crosses, into one buffer of the unit's size), the next unit's gather is
// started before the current one computes (prefetch: communication overlaps
// compute), and released after it ran. At most two units of a model are
// gathered at once.
//
// Training (trainable): each block runs as a checkpointed function that
// keeps only its input. Its backward gathers the block again (the block
// below is prefetched), recomputes it with grad, backprops, reduces the
// block's gradient into the owners' ranges (in fp32 buckets of at most
// --bucket-size cut along the unit, one reduce per owner a bucket crosses,
// at most two buckets in flight) and releases weights and gradients. The
// embedding and the head have no recompute: the embedding's backward needs
// no weights, and the head stays gathered from its forward to its backward
// (the loss's last and backward's first work); their gradients reduce from a
// post-accumulate hook as soon as autograd has produced them.
//
// A frozen parameter (requires_grad false: an MoE router's
// e_score_correction_bias) is laid out, sharded and gathered like the
// others; it takes no gradient (zeros go into the reduce in its place) and
// the optimizer does not step it (sharded_adamw.h).
//
// Every rank must run the same units in the same order (the collectives
// pair up by order): evaluation on a rank without windows still gathers
// (forward_hidden of an undefined tensor). A forward-only model (the online
// teacher) is the same without the gradient half.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "minipuzzle/data_parallel.h"
#include "minipuzzle/flat_parameter_layout.h"
#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

class CheckpointReader;

// Bytes of gathered units held now and at most, over every sharded model of
// this rank (the student's and the teacher's gathers overlap in time).
struct GatheredBytes {
  int64_t now = 0, peak = 0;
};

class ShardedParameters {
 public:
  // `model`: built with placeholders (HybridLM(config, options, true));
  // `load` then fills this rank's range. InputError for a model with tied
  // embeddings (the embedding would belong to two units).
  ShardedParameters(HybridLM model, DataParallel& dp, bool trainable, std::shared_ptr<GatheredBytes> gathered);
  ~ShardedParameters();
  ShardedParameters(const ShardedParameters&) = delete;
  ShardedParameters& operator=(const ShardedParameters&) = delete;

  // This rank's range out of a checkpoint, one tensor read at a time (each
  // tensor checked for presence and shape first, as load_model does).
  void load(const CheckpointReader& reader);

  HybridLM& model() { return model_; }
  const FlatParameterLayout& layout() const { return layout_; }
  const std::vector<std::pair<std::string, torch::Tensor>>& named() const { return named_; }
  // This rank's range of the weights, flat, in the model's dtype (the end
  // of the last rank's range is zero padding).
  const torch::Tensor& shard() const { return shard_; }

  // Units: 0 the embedding, 1 + i block i, the last the head.
  int64_t units() const { return static_cast<int64_t>(unit_entries_.size()); }
  int64_t head_unit() const { return units() - 1; }
  void prefetch(int64_t unit);     // starts its gather (no-op when started, held or out of range)
  void materialise(int64_t unit);  // waits for its gather (starting it if needed); the parameters hold it
  void release(int64_t unit);      // back to placeholders

  // The final normed hidden states (model->forward_hidden), every unit
  // gathered in turn; the head stays materialised for the loss (release it,
  // or the head's gradient hook does). With grad (trainable, grad mode on),
  // blocks are checkpointed and backward reduces their gradients. An
  // undefined `tokens` only takes part in the gathers.
  torch::Tensor forward_hidden(const torch::Tensor& tokens);

  // Training: where each owner's mean gradient goes (lo: its flat position).
  using Sink = std::function<void(int64_t lo, const torch::Tensor& mean)>;
  void set_gradient_sink(Sink sink);
  // After each backward: reduces what backward did not reach (zeros), waits
  // for every reduce, releases whatever is still gathered.
  void finish_backward();

  // Parameter `entry` of the layout, whole, on every rank (checkpoints and
  // final/: written one tensor at a time).
  torch::Tensor gather_tensor(std::size_t entry);

  int64_t shard_bytes() const { return static_cast<int64_t>(shard_.nbytes()); }
  // The most fp32 reduce-bucket bytes in flight at once (two buckets of at
  // most the data-parallel bucket size), and the largest unit gradient (the
  // model's dtype) held while its buckets were filled.
  int64_t reduce_peak_bytes() const { return reduce_peak_; }
  int64_t unit_gradient_peak_bytes() const { return unit_grad_peak_; }

  // Internal (the checkpointed block and the hooks).
  torch::Tensor run_block(int64_t layer, const torch::Tensor& h);
  torch::Tensor backward_block(int64_t layer, const torch::Tensor& h, const torch::Tensor& grad_out);
  void accumulated(int64_t unit);

 private:
  struct Gather {
    torch::Tensor flat;
    std::vector<std::function<void()>> waits;
    bool held = false;
  };
  struct Reduce {
    torch::Tensor flat;
    int64_t lo = 0;
    struct Part {
      int64_t a, b;
      int owner;
      std::function<void()> wait;
    };
    std::vector<Part> parts;
  };
  int64_t unit_lo(int64_t unit) const;
  int64_t unit_hi(int64_t unit) const;
  void start_range(int64_t lo, int64_t hi, const torch::Tensor& out, std::vector<std::function<void()>>& waits);
  void reduce_unit(int64_t unit, const std::vector<torch::Tensor>& grads);
  void complete_oldest_reduce();

  HybridLM model_;
  DataParallel& dp_;
  bool trainable_;
  std::shared_ptr<GatheredBytes> gathered_;
  std::vector<std::pair<std::string, torch::Tensor>> named_;
  std::vector<torch::Tensor> params_;  // index-aligned with layout_.entries
  FlatParameterLayout layout_;
  torch::Tensor shard_;
  std::vector<std::pair<std::size_t, std::size_t>> unit_entries_;  // [first, last) entry per unit
  std::vector<Gather> gathers_;
  Sink sink_;
  bool hooked_ = false;
  std::vector<int64_t> arrived_;  // per unit: parameters accumulated this backward (embedding, head)
  std::vector<bool> reduced_;     // per unit: its gradient reduced this backward
  std::deque<Reduce> reducing_;
  int64_t reduce_bytes_ = 0, reduce_peak_ = 0, unit_grad_peak_ = 0;
};

}  // namespace minipuzzle
