#include "minipuzzle/rms_norm.h"

#include "kernels_build.h"
#include "minipuzzle/kernel_dispatch.h"
#if MINIPUZZLE_HAVE_CUDA_KERNELS
#include "cuda_ops/cuda_ops.h"
#endif

namespace minipuzzle {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  // transformers: statistic in fp32, cast back to the input dtype *before*
  // the weight product (so bf16 models multiply in bf16).
  auto xf = x.to(torch::kFloat32);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  auto normed = (xf * torch::rsqrt(var + eps)).to(x.scalar_type());
  return weight * normed;
}

torch::Tensor gated_rms_norm_reference(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                                       int64_t group_size, double eps) {
  auto h = x.to(torch::kFloat32) * torch::silu(z.to(torch::kFloat32));
  auto sizes = h.sizes().vec();
  int64_t last = sizes.back();
  TORCH_CHECK(last % group_size == 0, "gated_rms_norm: ", last, " channels not divisible by group ", group_size);
  std::vector<int64_t> grouped(sizes.begin(), sizes.end() - 1);
  grouped.push_back(last / group_size);
  grouped.push_back(group_size);
  auto hg = h.view(grouped);
  auto var = hg.pow(2).mean(-1, true);
  hg = hg * torch::rsqrt(var + eps);
  return weight * hg.view(sizes).to(x.scalar_type());
}

torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                             int64_t group_size, double eps) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(x) && cuda_ops::gated_rms_norm_supported(x, z, weight, group_size))
    return cuda_ops::gated_rms_norm(x, z, weight, group_size, eps);
#endif
  return gated_rms_norm_reference(x, z, weight, group_size, eps);
}

}  // namespace minipuzzle
