#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "minipuzzle/causal_conv1d.h"
#include "minipuzzle/forward_kl.h"
#include "minipuzzle/kernel_dispatch.h"
#include "minipuzzle/rms_norm.h"

namespace minipuzzle {
namespace {

TEST(KernelDispatch, BuildHasTheKernelsWhenNvccAndCudaTorchAreThere) {
  // CMake decides whether kernels/ is compiled and linked; this catches the
  // wiring breaking silently (CI has nvcc, so CI builds them).
  EXPECT_EQ(cuda_kernels_compiled(), MINIPUZZLE_EXPECT_KERNELS != 0);
}

TEST(KernelDispatch, CpuTensorsNeverUseTheKernels) {
  EXPECT_FALSE(use_cuda_kernels(torch::zeros({2})));
  EXPECT_FALSE(use_cuda_kernels(torch::Tensor()));
  torch::manual_seed(3);
  auto x = torch::randn({2, 9, 6}), w = torch::randn({6, 1, 4}), b = torch::randn({6});
  EXPECT_TRUE(torch::equal(causal_conv1d_silu(x, w, b), causal_conv1d_silu_reference(x, w, b)));
  auto z = torch::randn({2, 9, 6}), nw = torch::randn({6});
  EXPECT_TRUE(torch::equal(gated_rms_norm(x, z, nw, 3, 1e-5), gated_rms_norm_reference(x, z, nw, 3, 1e-5)));
  auto s = torch::randn({4, 11}), t = torch::randn({4, 11});
  auto a = forward_kl(s, t, 1.5, 0.25, true), r = forward_kl_reference(s, t, 1.5, 0.25, true);
  EXPECT_TRUE(torch::equal(a.kl, r.kl));
  EXPECT_TRUE(torch::equal(a.grad, r.grad));
}

TEST(KernelDispatch, SwitchTurnsTheKernelsOffAndOn) {
  const bool was = cuda_kernels_enabled();
  set_cuda_kernels_enabled(false);
  EXPECT_FALSE(cuda_kernels_enabled());
  if (torch::cuda::is_available()) {
    EXPECT_FALSE(use_cuda_kernels(torch::zeros({2}, torch::kCUDA)));
  }
  set_cuda_kernels_enabled(true);
  EXPECT_TRUE(cuda_kernels_enabled());
  if (torch::cuda::is_available()) {
    EXPECT_EQ(use_cuda_kernels(torch::zeros({2}, torch::kCUDA)), cuda_kernels_compiled());
  }
  set_cuda_kernels_enabled(was);
}

TEST(KernelDispatch, KernelDtypes) {
  EXPECT_TRUE(cuda_kernel_dtype(torch::kFloat32));
  EXPECT_TRUE(cuda_kernel_dtype(torch::kBFloat16));
  EXPECT_TRUE(cuda_kernel_dtype(torch::kFloat16));
  EXPECT_FALSE(cuda_kernel_dtype(torch::kFloat64));
  EXPECT_FALSE(cuda_kernel_dtype(torch::kInt64));
}

}  // namespace
}  // namespace minipuzzle
