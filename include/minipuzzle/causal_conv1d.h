// Depthwise causal conv1d + SiLU on the channel-last layout in_proj produces.
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// x: [b, L, C]; weight: [C, 1, K]; bias: [C] or undefined. Output [b, L, C]:
// out[t, c] = silu(bias[c] + sum_k weight[c, 0, k] * x[t - (K-1) + k, c]),
// with x before position 0 taken as zero. Autograd-capable reference.
torch::Tensor causal_conv1d_silu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace minipuzzle
