// RMSNorm and the Mamba2 gated RMSNorm, with transformers' exact casting
// rules (normalisation in fp32; see the .cpp for where each cast happens).
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// weight * (x / rms(x)) with the statistic in fp32, the product in x's dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Norm after gate: y = x * silu(z) in fp32, RMS-normalised per group of
// `group_size` channels, times weight. Returns fp32 when x is fp32. Runs our
// CUDA kernel for CUDA tensors (kernel_dispatch.h), the reference otherwise.
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                             int64_t group_size, double eps);

// The definition, in LibTorch ops (transformers' casting).
torch::Tensor gated_rms_norm_reference(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                                       int64_t group_size, double eps);

}  // namespace minipuzzle
