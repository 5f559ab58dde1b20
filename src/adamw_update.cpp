#include "minipuzzle/adamw_update.h"

#include "kernels_build.h"
#include "minipuzzle/kernel_dispatch.h"
#if MINIPUZZLE_HAVE_CUDA_KERNELS
#include "cuda_ops/cuda_ops.h"
#endif

namespace minipuzzle {

void adamw_update_reference(const AdamWTensors& t, const AdamWStepFactors& f) {
  torch::NoGradGuard no_grad;
  const double bc1 = 1.0 - std::pow(f.beta1, static_cast<double>(f.step));
  const double bc2 = 1.0 - std::pow(f.beta2, static_cast<double>(f.step));
  torch::Tensor clip;
  if (f.grad_sum_of_squares.defined()) {
    TORCH_CHECK(f.max_grad_norm > 0, "AdamW: clipping on the device needs max_grad_norm > 0");
    clip = clip_factor_reference(f.grad_sum_of_squares, f.max_grad_norm);
  }
  for (std::size_t i = 0; i < t.params.size(); ++i) {
    const torch::Tensor& p = t.params[i];
    if (clip.defined() && clip.device() != p.device()) clip = clip.to(p.device());
    if (!p.grad().defined()) continue;
    auto g = p.grad().to(torch::kFloat32);
    if (clip.defined())
      g = g * clip;  // a 0-dim fp32 factor: the same fp32 products as a host scalar
    else if (f.grad_scale != 1.0)
      g = g * f.grad_scale;
    torch::Tensor master = t.masters[i], exp_avg = t.exp_avgs[i], exp_avg_sq = t.exp_avg_sqs[i];
    exp_avg.mul_(f.beta1).add_(g, 1.0 - f.beta1);
    exp_avg_sq.mul_(f.beta2).addcmul_(g, g, 1.0 - f.beta2);
    if (t.decay[i] && f.weight_decay > 0) master.mul_(1.0 - f.lr * f.weight_decay);
    auto denom = (exp_avg_sq / bc2).sqrt_().add_(f.eps);
    master.addcdiv_(exp_avg, denom, -f.lr / bc1);
    if (!master.is_same(p)) p.detach().copy_(master);
  }
}

torch::Tensor clip_factor_reference(const torch::Tensor& sum_of_squares, double max_norm) {
  torch::NoGradGuard no_grad;
  const auto norm = sum_of_squares.to(torch::kDouble).sqrt();
  return torch::where(norm > max_norm, max_norm / (norm + 1e-6), torch::ones_like(norm)).to(torch::kFloat32);
}

torch::Tensor grad_sum_of_squares_reference_on_device(const std::vector<torch::Tensor>& params) {
  // Added up on the device, in fp64 (no wait, not one per tensor).
  torch::NoGradGuard no_grad;
  torch::Tensor sq;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    const auto s = p.grad().to(torch::kFloat32).square().sum().to(torch::kDouble);
    sq = sq.defined() ? sq.add_(s) : s;
  }
  return sq.defined() ? sq : torch::zeros({}, torch::kDouble);
}

double grad_sum_of_squares_reference(const std::vector<torch::Tensor>& params) {
  return grad_sum_of_squares_reference_on_device(params).item<double>();
}

AdamWUpdate::AdamWUpdate(AdamWTensors tensors) : t_(std::move(tensors)) {
  const std::size_t n = t_.params.size();
  TORCH_CHECK(t_.masters.size() == n && t_.exp_avgs.size() == n && t_.exp_avg_sqs.size() == n && t_.decay.size() == n,
              "AdamWUpdate: tensor lists of different lengths");
}

bool AdamWUpdate::uses_kernel() const {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  return !t_.params.empty() && use_cuda_kernels(t_.params.front()) && cuda_ops::adamw_kernel_supported(t_);
#else
  return false;
#endif
}

AdamWKernelState* AdamWUpdate::kernel_state() {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (!uses_kernel()) return nullptr;
  if (!state_ || !cuda_ops::adamw_kernel_state_matches(*state_, t_)) state_ = cuda_ops::make_adamw_kernel_state(t_);
  return state_.get();
#else
  return nullptr;
#endif
}

torch::Tensor AdamWUpdate::grad_sum_of_squares_on_device() {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (AdamWKernelState* s = kernel_state()) return cuda_ops::adamw_grad_sum_of_squares(*s);
#endif
  return grad_sum_of_squares_reference_on_device(t_.params);
}

double AdamWUpdate::grad_sum_of_squares() { return grad_sum_of_squares_on_device().item<double>(); }

void AdamWUpdate::apply(const AdamWStepFactors& f) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (AdamWKernelState* s = kernel_state()) return cuda_ops::adamw_update(*s, f);
#endif
  adamw_update_reference(t_, f);
}

}  // namespace minipuzzle
