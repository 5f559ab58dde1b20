// The fused AdamW kernel on the GPU against the reference on the same
// tensors (copied to the CPU), and the trainer's AdamW on both paths.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../distill/adamw_test_tensors.h"
#include "gpu_test_util.h"
#include "minipuzzle/adamw.h"
#include "minipuzzle/adamw_update.h"

namespace minipuzzle {
namespace {

using testing::expect_close;
using testing::random_adamw_tensors;

AdamWTensors copy_to(const AdamWTensors& t, torch::Device device) {
  AdamWTensors c = t;
  for (std::size_t i = 0; i < t.params.size(); ++i) {
    c.params[i] = t.params[i].to(device).clone();
    if (t.params[i].grad().defined()) c.params[i].mutable_grad() = t.params[i].grad().to(device).clone();
    c.masters[i] = t.masters[i].is_same(t.params[i]) ? c.params[i] : t.masters[i].to(device).clone();
    c.exp_avgs[i] = t.exp_avgs[i].to(device).clone();
    c.exp_avg_sqs[i] = t.exp_avg_sqs[i].to(device).clone();
  }
  return c;
}

TEST(AdamWCuda, FusedUpdateMatchesTheReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(71);
  const AdamWTensors cpu = random_adamw_tensors({{3, torch::kFloat32},
                                           {3 * 65536 + 11, torch::kBFloat16},
                                           {4096 * 3 + 1, torch::kFloat16},
                                           {65536, torch::kFloat32},
                                           {1, torch::kBFloat16}});
  AdamWTensors ref = copy_to(cpu, torch::kCPU);
  AdamWUpdate gpu(copy_to(cpu, torch::kCUDA));
  ASSERT_TRUE(gpu.uses_kernel());
  const double expected = grad_sum_of_squares_reference(ref.params);
  EXPECT_NEAR(gpu.grad_sum_of_squares(), expected, 1e-6 * expected);
  for (const auto& [step, scale] : {std::pair<int64_t, double>{1, 0.25}, {2, 1.0}, {9, 0.5}}) {
    AdamWStepFactors f;
    f.lr = 3e-3;
    f.weight_decay = 0.1;
    f.step = step;
    f.grad_scale = scale;
    gpu.apply(f);
    adamw_update_reference(ref, f);
    for (std::size_t i = 0; i < ref.params.size(); ++i) {
      const std::string what = "step " + std::to_string(step) + " tensor " + std::to_string(i);
      expect_close(gpu.tensors().exp_avgs[i], ref.exp_avgs[i], 1e-7, 1e-6, what + " exp_avg");
      expect_close(gpu.tensors().exp_avg_sqs[i], ref.exp_avg_sqs[i], 1e-9, 1e-6, what + " exp_avg_sq");
      expect_close(gpu.tensors().masters[i], ref.masters[i], 1e-7, 1e-6, what + " master");
      const auto& p = gpu.tensors().params[i];
      EXPECT_TRUE(torch::equal(p.cpu(), gpu.tensors().masters[i].to(p.scalar_type()).cpu())) << what;
    }
  }
  // The trainer's way: the clip factor from the sum of squares in device
  // memory, clipping and then not; the reference takes the same sum.
  for (const auto& [step, fraction] : {std::pair<int64_t, double>{10, 0.5}, {11, 2.0}}) {
    const torch::Tensor sum = gpu.grad_sum_of_squares_on_device();
    ASSERT_TRUE(sum.is_cuda());
    AdamWStepFactors f;
    f.lr = 3e-3;
    f.weight_decay = 0.1;
    f.step = step;
    f.max_grad_norm = fraction * std::sqrt(sum.item<double>());
    f.grad_sum_of_squares = sum;
    gpu.apply(f);
    f.grad_sum_of_squares = sum.cpu();
    adamw_update_reference(ref, f);
    for (std::size_t i = 0; i < ref.params.size(); ++i) {
      const std::string what = "device clip, step " + std::to_string(step) + " tensor " + std::to_string(i);
      expect_close(gpu.tensors().exp_avgs[i], ref.exp_avgs[i], 1e-7, 1e-6, what + " exp_avg");
      expect_close(gpu.tensors().masters[i], ref.masters[i], 1e-7, 1e-6, what + " master");
    }
  }
  // A gradient that moves (set to a new tensor): the table follows it.
  auto fresh = torch::randn({3}, torch::TensorOptions().device(torch::kCUDA));
  gpu.tensors().params[0].mutable_grad() = fresh;
  ref.params[0].mutable_grad() = fresh.cpu();
  EXPECT_NEAR(gpu.grad_sum_of_squares(), grad_sum_of_squares_reference(ref.params), 1e-5);
}

// AdamW as the trainer runs it (clip, step, zero), bf16 parameters on the GPU
// with the kernel against the same with the references.
TEST(AdamWCuda, TrainerOptimizerStepsAlikeOnBothPaths) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(72);
  const auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  auto w0 = torch::randn({257, 129}, opts), b0 = torch::randn({129}, opts);
  auto run = [&](bool kernels) {
    set_cuda_kernels_enabled(kernels);
    auto w = w0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
    AdamW opt({{"layer.weight", w}, {"layer.bias", b}}, {});
    std::vector<double> norms;
    for (int step = 0; step < 4; ++step) {
      torch::manual_seed(100 + step);
      auto x = torch::randn({8, 257}, opts);
      ((x.matmul(w) + b).to(torch::kFloat32).square().mean() * (step + 1)).backward();
      norms.push_back(opt.clip_grad_norm(0.5));
      opt.step(1e-2);
      opt.zero_grad();
    }
    set_cuda_kernels_enabled(true);
    return std::make_tuple(w.detach(), b.detach(), norms);
  };
  const auto [wk, bk, nk] = run(true);
  const auto [wr, br, nr] = run(false);
  for (std::size_t i = 0; i < nk.size(); ++i) EXPECT_NEAR(nk[i], nr[i], 1e-4 * nr[i]) << "step " << i;
  // bf16 weights: the masters agree to fp32 rounding, the rounded copies to
  // one bf16 step where a master sits on a rounding boundary.
  expect_close(wk, wr, 1e-2, 1e-2, "weight");
  expect_close(bk, br, 1e-2, 1e-2, "bias");
}

}  // namespace
}  // namespace minipuzzle
