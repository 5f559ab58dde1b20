#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "minipuzzle/causal_conv1d.h"

namespace minipuzzle {
namespace {

using testing::expect_close;
using testing::tolerance_for;
using testing::with_references;

struct ConvCase {
  int64_t batch, len, channels, width;
  torch::ScalarType dtype;
  bool bias;
  bool strided;  // x a channel slice of a wider tensor, as in the Mamba2 mixer
};

struct ConvRun {
  torch::Tensor out, dx, dw, db;
};

ConvRun run(const ConvCase& c, const torch::Tensor& x_full, const torch::Tensor& w0, const torch::Tensor& b0,
            const torch::Tensor& gout) {
  auto x_leaf = x_full.detach().clone().requires_grad_(true);
  auto w = w0.detach().clone().requires_grad_(true);
  auto b = c.bias ? b0.detach().clone().requires_grad_(true) : torch::Tensor();
  auto x = c.strided ? x_leaf.narrow(2, 3, c.channels) : x_leaf;
  auto out = causal_conv1d_silu(x, w, b);
  (out.to(torch::kFloat32) * gout).sum().backward();
  ConvRun r{out.detach(), x_leaf.grad(), w.grad(), c.bias ? b.grad() : torch::Tensor()};
  if (c.strided) r.dx = r.dx.narrow(2, 3, c.channels);
  return r;
}

TEST(Conv1dCuda, ForwardAndBackwardMatchTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  const ConvCase cases[] = {
      {2, 200, 300, 4, torch::kFloat32, true, false},  {2, 200, 300, 3, torch::kFloat32, true, false},
      {2, 200, 300, 2, torch::kFloat32, false, false}, {1, 1, 5, 4, torch::kFloat32, true, false},
      {3, 64, 130, 4, torch::kFloat32, true, true},    {1, 65, 128, 4, torch::kBFloat16, true, false},
      {2, 300, 260, 4, torch::kBFloat16, true, true},  {2, 129, 257, 3, torch::kFloat16, true, false},
  };
  torch::manual_seed(21);
  for (const auto& c : cases) {
    const std::string what = "b " + std::to_string(c.batch) + " L " + std::to_string(c.len) + " C " +
                             std::to_string(c.channels) + " K " + std::to_string(c.width) + " " +
                             c10::toString(c.dtype) + (c.bias ? " bias" : "") + (c.strided ? " strided" : "");
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    auto x = torch::randn({c.batch, c.len, c.channels + (c.strided ? 7 : 0)}, opts).to(c.dtype);
    auto w = (torch::randn({c.channels, 1, c.width}, opts) * 0.5).to(c.dtype);
    auto b = (torch::randn({c.channels}, opts) * 0.1).to(c.dtype);
    auto gout = torch::randn({c.batch, c.len, c.channels}, opts);
    const ConvRun k = run(c, x, w, b, gout);
    const ConvRun r = with_references([&] { return run(c, x, w, b, gout); });
    const double tol = tolerance_for(c.dtype);
    expect_close(k.out, r.out, tol * 0.1, tol, what + " out");
    expect_close(k.dx, r.dx, tol * 0.1, tol, what + " dx");
    // Sums over batch x len tokens: reduced in fp32 by the kernel, in the
    // weight dtype's accumulation by LibTorch.
    expect_close(k.dw, r.dw, tol * 0.1, tol, what + " dweight");
    if (c.bias) expect_close(k.db, r.db, tol * 0.1, tol, what + " dbias");
  }
}

TEST(Conv1dCuda, UnsupportedWidthFallsBackToTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(22);
  auto x = torch::randn({1, 20, 8}, torch::kCUDA), w = torch::randn({8, 1, 5}, torch::kCUDA);
  auto b = torch::randn({8}, torch::kCUDA);
  EXPECT_TRUE(torch::equal(causal_conv1d_silu(x, w, b), causal_conv1d_silu_reference(x, w, b)));
}

}  // namespace
}  // namespace minipuzzle
