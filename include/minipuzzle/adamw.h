// AdamW with fp32 master weights (decoupled weight decay, bias-corrected
// moments). When a parameter is not fp32 (bf16 compute on GPU) the optimizer
// keeps an fp32 master copy, steps that and copies it back rounded; fp32
// parameters are their own master. No weight decay on 1-D parameters (norms,
// biases, A_log, D, dt_bias) and conv1d, as is usual for Mamba/transformers.
//
// State (exp_avg, exp_avg_sq, master copies, step) saves to and loads from
// safetensors exactly, so a resumed run continues bit for bit. The arithmetic
// is adamw_update.h's: on CUDA our fused kernel, one launch per step.
#pragma once

#include <torch/torch.h>

#include "minipuzzle/adamw_update.h"

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace minipuzzle {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// One step's factors (the same for the replicated and the sharded
// optimizer): the options, the learning rate, the step number, and the
// clip (a sum of squares on the device and its bound; undefined: none).
AdamWStepFactors adamw_step_factors(const AdamWOptions& options, double lr, int64_t step,
                                    torch::Tensor grad_sum_of_squares, double max_grad_norm);

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, AdamWOptions options);

  // Global L2 norm of the gradients as they are (fp32 squares, summed in
  // fp64; one host synchronization).
  double grad_norm();
  // Makes the next step() use the gradients scaled so that their norm is at
  // most max_norm (nothing when max_norm <= 0) and returns the global norm as
  // a 0-dim fp64 tensor on the gradients' device, unread: the norm and the
  // factor stay on the device, so the step need not wait for them. The factor
  // is folded into the update, which saves a pass over the gradients: they
  // are left as they are.
  torch::Tensor clip_grad_norm_on_device(double max_norm);
  double clip_grad_norm(double max_norm);  // the same, the norm read (one wait)
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return step_; }
  static bool decays(const std::string& name, const torch::Tensor& p);
  // Bytes of the fp32 masters (those that are not the parameters
  // themselves) and of the two moments.
  struct StateBytes {
    int64_t master = 0, moments = 0;
  };
  StateBytes state_bytes() const;

  void save(const std::filesystem::path& file) const;  // atomic
  // save() in two halves: the state copied to the host now, written later
  // (possibly on another thread; write_state is atomic too).
  struct State {
    int64_t step = 0;
    std::vector<std::pair<std::string, torch::Tensor>> tensors;  // CPU fp32
  };
  State snapshot() const;
  static void write_state(const State& state, const std::filesystem::path& file);
  // InputError when the file does not match these parameters (names, shapes).
  void load(const std::filesystem::path& file);

 private:
  std::vector<std::string> names_;  // index-aligned with update_.tensors()
  AdamWOptions opt_;
  AdamWUpdate update_;
  // Set by clip_grad_norm_on_device for the next step: its max_norm and the
  // gradients' sum of squares (undefined: no clipping).
  double max_grad_norm_ = 0;
  torch::Tensor grad_sum_of_squares_;
  int64_t step_ = 0;
};

}  // namespace minipuzzle
