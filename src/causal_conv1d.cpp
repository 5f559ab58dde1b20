#include "minipuzzle/causal_conv1d.h"

#include "kernels_build.h"
#include "minipuzzle/kernel_dispatch.h"
#if MINIPUZZLE_HAVE_CUDA_KERNELS
#include "cuda_ops/cuda_ops.h"
#endif

namespace minipuzzle {

torch::Tensor causal_conv1d_silu_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                           const torch::Tensor& bias) {
  const int64_t L = x.size(1), C = x.size(2), K = weight.size(-1);
  // Depthwise conv with K-1 zeros of left context: pad both sides by K-1 and
  // keep the first L outputs (what transformers does, so results match bitwise).
  auto y = torch::conv1d(x.transpose(1, 2).to(weight.scalar_type()), weight, bias, /*stride=*/1,
                         /*padding=*/K - 1, /*dilation=*/1, /*groups=*/C);
  y = y.narrow(2, 0, L);
  return torch::silu(y).to(x.scalar_type()).transpose(1, 2);
}

torch::Tensor causal_conv1d_silu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(x) && cuda_ops::causal_conv1d_silu_supported(x, weight, bias))
    return cuda_ops::causal_conv1d_silu(x, weight, bias);
#endif
  return causal_conv1d_silu_reference(x, weight, bias);
}

}  // namespace minipuzzle
