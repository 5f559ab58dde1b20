#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/ssd_scan.h"
#include "tiny_config.h"

namespace minipuzzle {
namespace {

using testing::expect_close;
using testing::with_references;

struct SsdCase {
  int64_t batch, len, heads, head_dim, groups, state, chunk;
  torch::ScalarType dtype;
  bool with_d;
};

// Turns the (opt-in) SSD kernel on for one test.
struct SsdKernelOn {
  bool was = ssd_scan_kernel_enabled();
  SsdKernelOn() { set_ssd_scan_kernel_enabled(true); }
  ~SsdKernelOn() { set_ssd_scan_kernel_enabled(was); }
};

TEST(SsdScanCuda, ForwardMatchesTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  torch::NoGradGuard no_grad;
  const SsdCase cases[] = {
      {2, 300, 8, 64, 2, 128, 128, torch::kFloat32, true},  {1, 1000, 4, 32, 4, 16, 256, torch::kFloat32, true},
      {1, 77, 6, 16, 3, 32, 64, torch::kFloat32, false},    {2, 300, 8, 64, 8, 64, 128, torch::kBFloat16, true},
      {1, 129, 2, 128, 1, 256, 128, torch::kFloat32, true},
  };
  torch::manual_seed(61);
  for (const auto& c : cases) {
    const std::string what = "b " + std::to_string(c.batch) + " L " + std::to_string(c.len) + " H " +
                             std::to_string(c.heads) + " P " + std::to_string(c.head_dim) + " G " +
                             std::to_string(c.groups) + " N " + std::to_string(c.state) + " chunk " +
                             std::to_string(c.chunk) + " " + c10::toString(c.dtype);
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    const int64_t di = c.heads * c.head_dim, gn = c.groups * c.state;
    auto xbc = (torch::randn({c.batch, c.len, di + 2 * gn}, opts) * 0.5).to(c.dtype);
    auto x = xbc.narrow(-1, 0, di).reshape({c.batch, c.len, c.heads, c.head_dim});
    auto B = xbc.narrow(-1, di, gn).reshape({c.batch, c.len, c.groups, c.state});
    auto C = xbc.narrow(-1, di + gn, gn).reshape({c.batch, c.len, c.groups, c.state});
    auto dt = torch::softplus(torch::randn({c.batch, c.len, c.heads}, opts) - 2);
    auto A = -torch::exp(torch::randn({c.heads}, opts) * 0.5);
    auto D = c.with_d ? torch::randn({c.heads}, opts) : torch::Tensor();
    auto k = ssd_scan(x, dt, A, B, C, D, c.chunk);
    auto r = ssd_scan_reference(x, dt, A, B, C, D, c.chunk);
    // Both compute in fp32 from the same inputs; sums over up to a chunk of
    // tokens and the state differ in order only.
    expect_close(k, r, 1e-4, 1e-4, what);
  }
}

TEST(SsdScanCuda, GradientsStillTakeTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  auto x = torch::randn({1, 20, 2, 4}, torch::kCUDA).requires_grad_(true);
  auto dt = torch::softplus(torch::randn({1, 20, 2}, torch::kCUDA));
  auto A = -torch::ones({2}, torch::kCUDA);
  auto B = torch::randn({1, 20, 1, 8}, torch::kCUDA), C = torch::randn({1, 20, 1, 8}, torch::kCUDA);
  auto y = ssd_scan(x, dt, A, B, C, torch::Tensor(), 8);
  EXPECT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined());
}

TEST(SsdScanCuda, ModelForwardWithEveryKernelMatchesTheReferences) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  torch::NoGradGuard no_grad;
  HybridLM m(testing::tiny_config("M*-MM-", 2));
  m->init_random(62);
  m->to(torch::kCUDA);
  auto tokens = torch::randint(0, 97, {2, 45}, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
  auto k = m->forward(tokens);
  auto r = with_references([&] { return m->forward(tokens); });
  expect_close(k, r, 1e-4, 1e-4, "logits");  // as HybridLM.CudaForwardMatchesCpu
}

}  // namespace
}  // namespace minipuzzle
