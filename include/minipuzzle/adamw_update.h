// One AdamW update over a list of tensors, the arithmetic behind AdamW::step
// (adamw.h keeps the state and the schedule): the LibTorch reference, which
// is the definition, and our fused CUDA kernel (kernels/adamw_cuda.h), which
// updates every tensor in one launch and computes the global gradient norm
// and the clip factor on the device, so a step need not wait for them.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace minipuzzle {

// The tensors of one update, index-aligned. masters[i] is params[i] itself
// when that is fp32; the gradient is params[i].grad() (a parameter without
// one is skipped).
struct AdamWTensors {
  std::vector<torch::Tensor> params, masters, exp_avgs, exp_avg_sqs;
  std::vector<bool> decay;
};

struct AdamWStepFactors {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;         // this update's number, from 1 (bias corrections)
  double grad_scale = 1.0;  // every gradient is multiplied by it first (the clip factor)
  // Clipping without a host wait: when defined (the 0-dim fp64 sum of squares
  // of the gradients, on their device, from grad_sum_of_squares_on_device),
  // grad_scale is replaced by clip_factor_reference(grad_sum_of_squares,
  // max_grad_norm), computed where the update runs; max_grad_norm must be > 0.
  torch::Tensor grad_sum_of_squares;
  double max_grad_norm = 0;
};

// The clip factor, as a 0-dim fp32 tensor on sum_of_squares' device, without
// reading it: in fp64, norm = sqrt(sum); max_norm / (norm + 1e-6) where norm >
// max_norm, else 1; then rounded to fp32.
torch::Tensor clip_factor_reference(const torch::Tensor& sum_of_squares, double max_norm);

// Per element, in fp32: g = grad * grad_scale; m = b1 m + (1 - b1) g;
// v = b2 v + (1 - b2) g^2; w *= 1 - lr wd (decaying tensors);
// w += -lr / (1 - b1^step) * m / (sqrt(v / (1 - b2^step)) + eps);
// then the parameter takes w rounded to its dtype.
void adamw_update_reference(const AdamWTensors& t, const AdamWStepFactors& f);

// Sum over the parameters of the fp32 sum of squares of each gradient, added
// up in fp64: a 0-dim fp64 tensor on the gradients' device (0 on the CPU when
// no parameter has a gradient), and the same read on the host.
torch::Tensor grad_sum_of_squares_reference_on_device(const std::vector<torch::Tensor>& params);
double grad_sum_of_squares_reference(const std::vector<torch::Tensor>& params);

struct AdamWKernelState;  // the kernel's device table of the tensors (src/cuda_ops/)

// Runs our kernel when it serves the tensors (CUDA, kernels compiled and
// enabled, one device, contiguous, fp32/fp16/bf16 parameters with fp32
// state), the reference otherwise; decided at every call, so the dispatch
// switch (kernel_dispatch.h) takes effect at once. The kernel's table is
// built at the first call and again whenever a gradient or tensor moves.
class AdamWUpdate {
 public:
  explicit AdamWUpdate(AdamWTensors tensors);
  const AdamWTensors& tensors() const { return t_; }
  // Without a host wait: a new 0-dim fp64 tensor on the parameters' device.
  torch::Tensor grad_sum_of_squares_on_device();
  double grad_sum_of_squares();  // the same, read (one wait)
  void apply(const AdamWStepFactors& f);
  // True when the next call runs the kernel.
  bool uses_kernel() const;

 private:
  AdamWKernelState* kernel_state();  // nullptr: the reference serves
  AdamWTensors t_;
  std::shared_ptr<AdamWKernelState> state_;
};

}  // namespace minipuzzle
