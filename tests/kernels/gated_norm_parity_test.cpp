#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "minipuzzle/rms_norm.h"

namespace minipuzzle {
namespace {

using testing::expect_close;
using testing::tolerance_for;
using testing::with_references;

struct NormCase {
  int64_t channels, groups;
  torch::ScalarType x_dtype, zw_dtype;  // the mixer: fp32 scan output, model-dtype gate and weight
};

struct NormRun {
  torch::Tensor out, dx, dz, dw;
};

NormRun run(const NormCase& c, const torch::Tensor& x0, const torch::Tensor& z0, const torch::Tensor& w0,
            const torch::Tensor& gout) {
  auto x = x0.detach().clone().requires_grad_(true);
  auto z = z0.detach().clone().requires_grad_(true);
  auto w = w0.detach().clone().requires_grad_(true);
  auto out = gated_rms_norm(x, z, w, c.channels / c.groups, 1e-5);
  (out.to(torch::kFloat32) * gout).sum().backward();
  return {out.detach(), x.grad(), z.grad(), w.grad()};
}

TEST(GatedNormCuda, ForwardAndBackwardMatchTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  const NormCase cases[] = {
      {256, 1, torch::kFloat32, torch::kFloat32},  {256, 4, torch::kFloat32, torch::kFloat32},
      {96, 3, torch::kFloat16, torch::kFloat16},   {512, 8, torch::kBFloat16, torch::kBFloat16},
      {2048, 8, torch::kFloat32, torch::kBFloat16}, {8192, 1, torch::kFloat32, torch::kFloat32},
      {300, 2, torch::kFloat32, torch::kFloat32},
  };
  torch::manual_seed(31);
  for (const auto& c : cases) {
    const std::string what = "D " + std::to_string(c.channels) + " G " + std::to_string(c.groups) + " " +
                             c10::toString(c.x_dtype) + "/" + c10::toString(c.zw_dtype);
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    auto x = torch::randn({2, 37, c.channels}, opts).to(c.x_dtype);
    auto z = torch::randn({2, 37, c.channels}, opts).to(c.zw_dtype);
    auto w = (1 + 0.1 * torch::randn({c.channels}, opts)).to(c.zw_dtype);
    auto gout = torch::randn({2, 37, c.channels}, opts);
    const NormRun k = run(c, x, z, w, gout);
    const NormRun r = with_references([&] { return run(c, x, z, w, gout); });
    const double tol = std::max(tolerance_for(c.x_dtype), tolerance_for(c.zw_dtype));
    EXPECT_EQ(k.out.scalar_type(), r.out.scalar_type()) << what;
    expect_close(k.out, r.out, tol * 0.1, tol, what + " out");
    expect_close(k.dx, r.dx, tol * 0.1, tol, what + " dx");
    expect_close(k.dz, r.dz, tol * 0.1, tol, what + " dz");
    expect_close(k.dw, r.dw, tol * 0.1, tol, what + " dweight");
  }
}

TEST(GatedNormCuda, GroupsLargerThanTheKernelsFallBack) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  auto x = torch::randn({2, 16384}, torch::kCUDA), z = torch::randn({2, 16384}, torch::kCUDA);
  auto w = torch::randn({16384}, torch::kCUDA);
  EXPECT_TRUE(torch::equal(gated_rms_norm(x, z, w, 16384, 1e-5), gated_rms_norm_reference(x, z, w, 16384, 1e-5)));
}

}  // namespace
}  // namespace minipuzzle
