// Depthwise causal conv1d + SiLU on the channel-last layout in_proj produces.
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// x: [b, L, C]; weight: [C, 1, K]; bias: [C] or undefined. Output [b, L, C]:
// out[t, c] = silu(bias[c] + sum_k weight[c, 0, k] * x[t - (K-1) + k, c]),
// with x before position 0 taken as zero. Autograd-capable. Runs our CUDA
// kernel for CUDA tensors (kernel_dispatch.h), the reference otherwise.
torch::Tensor causal_conv1d_silu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// The definition, in LibTorch ops (what transformers computes).
torch::Tensor causal_conv1d_silu_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                           const torch::Tensor& bias);

}  // namespace minipuzzle
