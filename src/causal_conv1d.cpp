#include "minipuzzle/causal_conv1d.h"

namespace minipuzzle {

torch::Tensor causal_conv1d_silu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t L = x.size(1), C = x.size(2), K = weight.size(-1);
  // Depthwise conv with K-1 zeros of left context: pad both sides by K-1 and
  // keep the first L outputs (what transformers does, so results match bitwise).
  auto y = torch::conv1d(x.transpose(1, 2).to(weight.scalar_type()), weight, bias, /*stride=*/1,
                         /*padding=*/K - 1, /*dilation=*/1, /*groups=*/C);
  y = y.narrow(2, 0, L);
  return torch::silu(y).to(x.scalar_type()).transpose(1, 2);
}

}  // namespace minipuzzle
