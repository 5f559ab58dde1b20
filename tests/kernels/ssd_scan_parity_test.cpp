#include <functional>

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

// ssd_scan forward and backward of sum(dy * y) on fresh leaves of one set of
// random inputs (x, B, C views of one tensor, as the mixer has them).
struct ScanGrads {
  torch::Tensor y, dxbc, ddt, dA, dD;
};

std::function<ScanGrads()> scan_with_gradients(const SsdCase& c) {
  const auto opts = torch::TensorOptions().device(torch::kCUDA);
  const int64_t di = c.heads * c.head_dim, gn = c.groups * c.state;
  auto xbc0 = (torch::randn({c.batch, c.len, di + 2 * gn}, opts) * 0.5).to(c.dtype);
  auto dt0 = torch::softplus(torch::randn({c.batch, c.len, c.heads}, opts) - 2);
  auto A0 = -torch::exp(torch::randn({c.heads}, opts) * 0.5);
  auto D0 = torch::randn({c.heads}, opts);
  auto dy = torch::randn({c.batch, c.len, c.heads, c.head_dim}, opts);
  return [=] {
    auto xbc = xbc0.clone().requires_grad_(true), dt = dt0.clone().requires_grad_(true);
    auto A = A0.clone().requires_grad_(true);
    auto D = c.with_d ? D0.clone().requires_grad_(true) : torch::Tensor();
    auto x = xbc.narrow(-1, 0, di).reshape({c.batch, c.len, c.heads, c.head_dim});
    auto B = xbc.narrow(-1, di, gn).reshape({c.batch, c.len, c.groups, c.state});
    auto C = xbc.narrow(-1, di + gn, gn).reshape({c.batch, c.len, c.groups, c.state});
    auto y = ssd_scan(x, dt, A, B, C, D, c.chunk);
    (y * dy).sum().backward();
    return ScanGrads{y.detach(), xbc.grad(), dt.grad(), A.grad(), c.with_d ? D.grad() : torch::Tensor()};
  };
}

// Gradient cases: a short last chunk, no D, bf16 with chunk 256.
const SsdCase kBackwardCases[] = {
    {2, 300, 8, 64, 2, 128, 128, torch::kFloat32, true},
    {1, 77, 6, 16, 3, 32, 64, torch::kFloat32, false},
    {1, 260, 4, 32, 4, 16, 256, torch::kBFloat16, true},
};

TEST(SsdScanCuda, BackwardMatchesTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  torch::manual_seed(63);
  for (const auto& c : kBackwardCases) {
    const std::string what = "L " + std::to_string(c.len) + " H " + std::to_string(c.heads) + " chunk " +
                             std::to_string(c.chunk) + " " + c10::toString(c.dtype);
    const auto run = scan_with_gradients(c);
    const ScanGrads k = run();
    const ScanGrads r = with_references(run);
    const bool fp32 = c.dtype == torch::kFloat32;
    const double tol = fp32 ? 1e-4 : 2e-2;
    expect_close(k.y, r.y, 1e-4, 1e-4, what + " y");
    expect_close(k.dxbc, r.dxbc, tol, tol, what + " dx, dB, dC");
    // bf16: tensor cores, see TensorCoresMatchCudaCores.
    expect_close(k.ddt, r.ddt, fp32 ? 1e-4 : 1e-3, fp32 ? 1e-4 : 1e-3, what + " ddt");
    expect_close(k.dA, r.dA, fp32 ? 1e-4 : 3e-3, fp32 ? 1e-4 : 3e-3, what + " dA");
    if (c.with_d) expect_close(k.dD, r.dD, 1e-4, 1e-4, what + " dD");
  }
}

// The mixer's call: dt_raw a slice of in_proj's output, softplus, bias and
// clamp inside the kernels; gradients reach dt_raw (through the slice) and
// dt_bias. bf16: the reference does the dt step in bf16, the kernels in fp32.
TEST(SsdScanCuda, SoftplusDtForwardAndBackwardMatchTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  torch::manual_seed(64);
  const double dt_min = 1e-3;
  for (const auto& c : kBackwardCases) {
    const std::string what = "softplus dt L " + std::to_string(c.len) + " H " + std::to_string(c.heads) + " " +
                             c10::toString(c.dtype);
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    const int64_t di = c.heads * c.head_dim, gn = c.groups * c.state;
    auto all0 = (torch::randn({c.batch, c.len, di + 2 * gn + c.heads}, opts) * 2).to(c.dtype);
    auto bias0 = torch::randn({c.heads}, opts) - 2;
    auto A0 = -torch::exp(torch::randn({c.heads}, opts) * 0.5);
    auto D0 = torch::randn({c.heads}, opts);
    auto dy = torch::randn({c.batch, c.len, c.heads, c.head_dim}, opts);
    struct Grads {
      torch::Tensor y, dall, dbias, dA;
    };
    auto run = [&] {
      auto all = all0.clone().requires_grad_(true), bias = bias0.clone().requires_grad_(true);
      auto A = A0.clone().requires_grad_(true);
      auto D = c.with_d ? D0 : torch::Tensor();
      auto x = all.narrow(-1, 0, di).reshape({c.batch, c.len, c.heads, c.head_dim});
      auto B = all.narrow(-1, di, gn).reshape({c.batch, c.len, c.groups, c.state});
      auto C = all.narrow(-1, di + gn, gn).reshape({c.batch, c.len, c.groups, c.state});
      auto dt_raw = all.narrow(-1, di + 2 * gn, c.heads);
      auto y = ssd_scan_softplus_dt(x, dt_raw, bias, A, B, C, D, c.chunk, dt_min);
      (y * dy).sum().backward();
      return Grads{y.detach(), all.grad().to(torch::kFloat32), bias.grad(), A.grad()};
    };
    const Grads k = run();
    const Grads r = with_references(run);
    const double tol = c.dtype == torch::kFloat32 ? 1e-4 : 3e-2;
    expect_close(k.y, r.y, tol, tol, what + " y");
    expect_close(k.dall, r.dall, tol, tol, what + " dx, dB, dC, ddt_raw");
    expect_close(k.dbias, r.dbias, tol, tol, what + " ddt_bias");
    expect_close(k.dA, r.dA, tol, tol, what + " dA");
  }
}

// bf16 on tensor cores against the same kernels on CUDA cores (fp32) and
// the reference. The split operands (block_gemm.cuh) keep y within 1e-4 of
// fp32 math (rounding the operands to bf16 alone misses by about 1e-3 of
// the largest value); ddt and dA, sums of terms that cancel, are given more.
// The bf16 leaves' gradients are rounded to bf16 at the end: one rounding apart.
TEST(SsdScanCuda, TensorCoresMatchCudaCores) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  struct TensorCores {
    bool was = ssd_tensor_cores_enabled();
    ~TensorCores() { set_ssd_tensor_cores_enabled(was); }
  } restore;
  const SsdCase cases[] = {
      {1, 1000, 16, 64, 8, 128, 128, torch::kBFloat16, true},   // the 8B's mixer, last chunk short
      {2, 300, 4, 128, 1, 256, 256, torch::kBFloat16, false},  // the largest head and state, chunk 256
      {1, 77, 6, 48, 3, 40, 32, torch::kBFloat16, true},       // partial tiles everywhere
  };
  torch::manual_seed(65);
  for (const auto& c : cases) {
    const std::string what = "tensor cores L " + std::to_string(c.len) + " P " + std::to_string(c.head_dim) +
                             " N " + std::to_string(c.state) + " chunk " + std::to_string(c.chunk);
    const auto run = scan_with_gradients(c);
    set_ssd_tensor_cores_enabled(true);
    const ScanGrads tc = run();
    set_ssd_tensor_cores_enabled(false);
    const ScanGrads cores = run();
    const ScanGrads ref = with_references(run);
    for (const auto* other : {&cores, &ref}) {
      const std::string against = what + (other == &cores ? " vs CUDA cores" : " vs reference");
      expect_close(tc.y, other->y, 1e-4, 1e-4, against + " y");
      expect_close(tc.ddt, other->ddt, 1e-3, 1e-3, against + " ddt");
      // A sum over every token of terms that largely cancel (the emulated
      // kernels' test measured up to 1e-3 of the largest value).
      expect_close(tc.dA, other->dA, 3e-3, 3e-3, against + " dA");
      expect_close(tc.dxbc, other->dxbc, 1e-2, 1e-2, against + " dx, dB, dC (bf16)");
    }
  }
}

TEST(SsdScanCuda, ModelForwardWithEveryKernelMatchesTheReferences) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  SsdKernelOn on;
  torch::NoGradGuard no_grad;  // the forward alone; model_on_kernels_test covers backward
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
