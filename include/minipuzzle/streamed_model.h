// Forward-only work on a model whose weights may not fit the device
// (DESIGN.md "Scale: where weights live").
//
// A ForwardModel is a HybridLM plus a residency chosen before anything is
// loaded (plan_residency): either every weight resident on the device, or
// weights streamed: they stay in the mapped checkpoint and a block's
// tensors are materialised on the device only while the block runs (the
// next block read ahead on a helper thread), released right after.
//
// Streamed runs go layer-major: a group of batches is embedded, then goes
// through block 0, then block 1, ..., so each block crosses to the device
// once per group; the hidden states between blocks are the only per-batch
// state. The embedding reads only the rows of the group's tokens and the LM
// head is read in vocabulary slices, so no unit larger than a block is ever
// held. Results are bit-identical to the resident run on the CPU (the same
// batches through the same ops; tests hold it): the model itself does not
// change, only when its weights exist.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

class CheckpointReader;

// What a forward-only command will hold, from the config alone.
struct ResidencyPlan {
  bool streamed = false;
  uint64_t cap_bytes = 0;             // the weight memory allowed (0: no cap)
  uint64_t weight_bytes = 0;          // the whole model at the compute dtype
  uint64_t largest_unit_bytes = 0;    // the largest block (or head slice)
  uint64_t streaming_bytes = 0;       // weights in flight when streamed: two units
  uint64_t activation_bytes_per_batch = 0;  // hidden state kept between blocks
  uint64_t working_bytes = 0;         // one batch through the widest op, and its logits
  int64_t head_slice_rows = 0;        // LM-head rows read at a time (streamed)
  uint64_t head_slice_bytes = 0;
  int64_t group_batches = 1;          // batches per layer-major pass (streamed)

  // One line: "weights resident: 1.73 GiB" or "weights streamed: ...".
  std::string describe() const;
};

struct ResidencyOptions {
  // Bytes the weights (plus, when streamed, a group's activations) may use
  // on the device; nullopt: everything resident on the CPU, the device's
  // total memory on CUDA.
  std::optional<uint64_t> max_device_memory;
  int64_t batch = 1;    // windows per batch
  int64_t seq_len = 2048;
  int64_t batches = 1;  // batches the command will run (bounds the group)
  // Hidden states a batch keeps between blocks: 1 for a forward; drop-one
  // layer scoring keeps the full stream and one per dropped layer.
  int64_t states_per_batch = 1;
  // Working memory beyond one batch through the model (score's logit
  // buffers), bytes.
  uint64_t extra_working_bytes = 0;
  // fp32 logit memory of one batch: nullopt, its whole [tokens x vocab]
  // logits and a temporary of their size (teacher-logits, score); eval
  // holds one head slice's (eval_logit_bytes).
  std::optional<uint64_t> logit_bytes;
};

// Streams when the weights plus one batch's working memory exceed the cap.
// InputError when even streaming cannot fit: the message names the smallest
// cap that works.
ResidencyPlan plan_residency(const ModelConfig& config, torch::ScalarType dtype, const ResidencyOptions& options,
                             const torch::Device& device);

// "40%" of the device's memory (CUDA) or of the model's weights at the
// compute dtype (CPU, where the device is the host), or a byte size ("2GiB",
// "500MB", "1073741824"). InputError naming --max-device-memory otherwise.
uint64_t parse_max_device_memory(const std::string& text, const ModelConfig& config, torch::ScalarType dtype,
                                 const torch::Device& device);

class ForwardModel {
 public:
  // Loads DIR per `plan` (resident: load_model; streamed: placeholders).
  ForwardModel(const std::filesystem::path& dir, torch::ScalarType dtype, torch::Device device, ResidencyPlan plan);
  // A model of `target` cut from DIR's weights by `recipes` (prune_recipes:
  // the one definition of pruning), streamed per `plan` (which must stream):
  // each tensor is the parent's tensor read when its block runs and sliced
  // as prune_model slices it, so a pruned candidate runs without the parent
  // or the candidate ever being whole in memory.
  ForwardModel(const std::filesystem::path& dir, const ModelConfig& target, const std::vector<TensorRecipe>& recipes,
               torch::ScalarType dtype, torch::Device device, ResidencyPlan plan);
  // An already loaded, resident model (shared, not copied).
  explicit ForwardModel(HybridLM resident);
  ~ForwardModel();
  ForwardModel(ForwardModel&&) noexcept;

  HybridLM& model() { return model_; }
  const ResidencyPlan& plan() const { return plan_; }

  using LogitsSink = std::function<void(size_t batch, const torch::Tensor& logits)>;
  using HiddenSink = std::function<void(size_t batch, const torch::Tensor& hidden)>;
  // Each batch's fp32 logits [b, L, V], in batch order (layer-major groups
  // when streamed; a plain forward per batch when resident). Each tensor is
  // fresh and the sink's own: it may overwrite it.
  void forward_logits(const std::vector<torch::Tensor>& batches, const LogitsSink& sink);
  // Each batch's final hidden state (after norm_f), [b, L, D].
  void forward_hidden(const std::vector<torch::Tensor>& batches, const HiddenSink& sink);
  // fp32 logits of final hidden states [.., D] (the model's lm_head). When
  // streamed, the head is read in its slices for each call, or held whole
  // until the next pass when the plan's slice covers the vocabulary: call
  // it on as many rows at a time as memory allows.
  torch::Tensor head_logits(const torch::Tensor& normed);

  // The same passes in pieces, for work that keeps more than one state per
  // batch (drop-one layer scoring). Streamed or resident alike:
  //   embed: batches [first, first+count) embedded (streamed: only the rows
  //     of their tokens are read);
  //   for_each_block: visit(i) for every block in order, block i's weights
  //     materialised for the call only (the next block read meanwhile);
  //   for_each_head_slice: visit(v0, w) for the LM head's kLmHeadSliceRows
  //     slices in order, w [n, D] on the device: logits computed per slice
  //     have the bits of lm_head_logits. Streamed, each call reads the head
  //     again unless the plan lets it stay whole.
  std::vector<torch::Tensor> embed(const std::vector<torch::Tensor>& batches, size_t first, size_t count);
  void for_each_block(const std::function<void(int64_t block)>& visit);
  void for_each_head_slice(const std::function<void(int64_t v0, const torch::Tensor& w)>& visit);
  // The same slices with, beside each, the slice of the checkpoint's own head
  // it was cut from (the parent's, for a model built from recipes; `w`
  // itself otherwise): one read of the head serves a pruned model and its
  // parent (candidate ranking compares the two).
  void for_each_head_slice(
      const std::function<void(int64_t v0, const torch::Tensor& w, const torch::Tensor& source)>& visit);
  // True when for_each_head_slice reads the head from the checkpoint on
  // every call (streamed, head larger than the plan's slice).
  bool head_read_per_pass() const;
  // A whole head held since the last for_each_head_slice gives its memory
  // back now (it would at the next embed or for_each_block), for work that
  // runs another model's head meanwhile.
  void release_head();

  // Weight bytes materialised now, and the most at any moment (streamed).
  uint64_t bytes_held() const;
  uint64_t peak_bytes_held() const;

 private:
  struct Stream;
  void open_stream(const std::filesystem::path& dir, const ModelConfig& config, torch::ScalarType dtype,
                   torch::Device device, const std::vector<TensorRecipe>* recipes);
  void run_group(const std::vector<torch::Tensor>& batches, size_t first, size_t count, const LogitsSink* logits,
                 const HiddenSink* hidden);


  HybridLM model_{nullptr};
  ResidencyPlan plan_;
  std::unique_ptr<Stream> stream_;  // streamed only
};

}  // namespace minipuzzle
