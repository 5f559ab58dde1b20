// AdamW with fp32 master weights (decoupled weight decay, bias-corrected
// moments). When a parameter is not fp32 (bf16 compute on GPU) the optimizer
// keeps an fp32 master copy, steps that and copies it back rounded; fp32
// parameters are their own master. No weight decay on 1-D parameters (norms,
// biases, A_log, D, dt_bias) and conv1d, as is usual for Mamba/transformers.
//
// State (exp_avg, exp_avg_sq, master copies, step) saves to and loads from
// safetensors exactly, so a resumed run continues bit for bit.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace minipuzzle {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, AdamWOptions options);

  // Global L2 norm of all gradients (fp32), before clipping.
  double grad_norm() const;
  // Scales gradients so their global norm is at most max_norm (no-op if
  // max_norm <= 0). Returns the norm before clipping.
  double clip_grad_norm(double max_norm);
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return step_; }
  static bool decays(const std::string& name, const torch::Tensor& p);

  void save(const std::filesystem::path& file) const;  // atomic
  // InputError when the file does not match these parameters (names, shapes).
  void load(const std::filesystem::path& file);

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, master, exp_avg, exp_avg_sq;  // master aliases param when fp32
    bool decay;
  };
  std::vector<Slot> slots_;
  AdamWOptions opt_;
  int64_t step_ = 0;
};

}  // namespace minipuzzle
