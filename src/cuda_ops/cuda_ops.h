// Our CUDA kernels as autograd-capable LibTorch ops (internal to src/; built
// only with kernels/). The public entry points in src/ choose between these
// and the LibTorch references (see kernel_dispatch.h).
#pragma once

#include <torch/torch.h>

#include <memory>

#include "minipuzzle/adamw_update.h"
#include "minipuzzle/forward_kl.h"

namespace minipuzzle::cuda_ops {

// True when the kernel handles these arguments (dtypes, shapes, limits);
// the caller uses the reference otherwise.
bool causal_conv1d_silu_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
torch::Tensor causal_conv1d_silu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

bool gated_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                              int64_t group_size);
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                             int64_t group_size, double eps);

bool ssd_scan_supported(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D, int64_t chunk_size);
// y [b, L, H, P] fp32, autograd-capable (forward and backward kernels).
torch::Tensor ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                               int64_t chunk_size);

bool ssd_scan_softplus_dt_supported(const torch::Tensor& x, const torch::Tensor& dt_raw, const torch::Tensor& dt_bias,
                                    const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& C,
                                    const torch::Tensor& D, int64_t chunk_size);
// ssd_scan with dt = max(softplus(dt_raw + dt_bias), dt_min) done by the kernels.
torch::Tensor ssd_scan_softplus_dt(const torch::Tensor& x, const torch::Tensor& dt_raw, const torch::Tensor& dt_bias,
                                   const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& C,
                                   const torch::Tensor& D, int64_t chunk_size, double dt_min);

bool forward_kl_supported(const torch::Tensor& student, const torch::Tensor& teacher);
ForwardKlResult logit_divergence(const torch::Tensor& student, const torch::Tensor& teacher, KdLoss loss,
                                 double temperature, double grad_scale, bool want_grad);

bool forward_kl_topk_supported(const torch::Tensor& student, const torch::Tensor& values,
                               const torch::Tensor& indices, const torch::Tensor& rest_lse);
ForwardKlResult topk_divergence(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, KdLoss loss,
                                double temperature, double grad_scale, bool want_grad);

// The fused AdamW update (adamw_update.h): the kernel serves every parameter
// that has a gradient, or none of them.
bool adamw_kernel_supported(const AdamWTensors& t);
// The device table for the tensors and their current gradients.
std::shared_ptr<AdamWKernelState> make_adamw_kernel_state(const AdamWTensors& t);
// False when a tensor or gradient moved, or a gradient appeared or went.
bool adamw_kernel_state_matches(const AdamWKernelState& s, const AdamWTensors& t);
// A new 0-dim fp64 tensor on the device, not read (no wait).
torch::Tensor adamw_grad_sum_of_squares(AdamWKernelState& s);
void adamw_update(AdamWKernelState& s, const AdamWStepFactors& f);

}  // namespace minipuzzle::cuda_ops
