#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "minipuzzle/forward_kl.h"

namespace minipuzzle {
namespace {

using testing::expect_close;

// The reference against the definition written out in double precision.
TEST(ForwardKl, ReferenceMatchesTheDefinitionInDouble) {
  torch::manual_seed(11);
  const double T = 1.7, scale = 0.3;
  auto s = torch::randn({5, 50}) * 3, t = torch::randn({5, 50}) * 3;
  auto r = forward_kl_reference(s, t, T, scale, true);
  auto sd = s.to(torch::kFloat64) / T, td = t.to(torch::kFloat64) / T;
  auto q = torch::softmax(sd, -1), p = torch::softmax(td, -1);
  auto kl = (p * (p.log() - q.log())).sum(-1);
  expect_close(r.kl, kl, 1e-6, 1e-6, "kl");
  expect_close(r.grad, (q - p) * scale, 1e-7, 1e-6, "grad");
  EXPECT_TRUE(torch::equal(r.student_argmax, s.argmax(-1)));
  EXPECT_TRUE(torch::equal(r.teacher_argmax, t.argmax(-1)));
  EXPECT_FALSE(forward_kl_reference(s, t, T, scale, false).grad.defined());
  // Equal distributions: zero loss and gradient.
  auto same = forward_kl_reference(s, s, T, scale, true);
  EXPECT_LT(same.kl.abs().max().item<double>(), 1e-6);
  EXPECT_LT(same.grad.abs().max().item<double>(), 1e-8);
}

struct KlCase {
  int64_t rows, vocab;
  torch::ScalarType student, teacher;
  double temperature;
};

TEST(ForwardKlCuda, KernelMatchesReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  const KlCase cases[] = {
      {37, 1000, torch::kFloat32, torch::kFloat32, 1.0},   {1, 1000, torch::kFloat32, torch::kFloat32, 2.0},
      {37, 1000, torch::kBFloat16, torch::kBFloat16, 1.0}, {5, 131072, torch::kFloat32, torch::kBFloat16, 1.0},
      {5, 131072, torch::kBFloat16, torch::kBFloat16, 2.5}, {3, 7, torch::kFloat16, torch::kFloat32, 1.0},
      {9, 50257, torch::kFloat32, torch::kFloat32, 0.5},
  };
  torch::manual_seed(5);
  for (const auto& c : cases) {
    const std::string what = "rows " + std::to_string(c.rows) + " vocab " + std::to_string(c.vocab) + " T " +
                             std::to_string(c.temperature) + " " + c10::toString(c.student) + "/" + c10::toString(c.teacher);
    auto s = (torch::randn({c.rows, c.vocab}, torch::kCUDA) * 4).to(c.student);
    auto t = (torch::randn({c.rows, c.vocab}, torch::kCUDA) * 4).to(c.teacher);
    const double scale = 0.37;
    auto k = forward_kl(s, t, c.temperature, scale, true);
    auto r = forward_kl_reference(s, t, c.temperature, scale, true);
    expect_close(k.kl, r.kl, 2e-5, 2e-5, what + " kl");
    EXPECT_EQ(k.grad.scalar_type(), c.student) << what;
    // The grad is rounded to the student's dtype once in both: at most one ulp apart.
    expect_close(k.grad, r.grad, 1e-7, c.student == torch::kFloat32 ? 1e-5 : 1e-2, what + " grad");
    EXPECT_TRUE(torch::equal(k.student_argmax, r.student_argmax)) << what;
    EXPECT_TRUE(torch::equal(k.teacher_argmax, r.teacher_argmax)) << what;
    auto no_grad = forward_kl(s, t, c.temperature, scale, false);
    EXPECT_FALSE(no_grad.grad.defined()) << what;
    expect_close(no_grad.kl, k.kl, 0, 0, what + " kl without grad");
  }
}

TEST(ForwardKlCuda, RowStridedInputsAndEqualDistributions) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(6);
  auto big = torch::randn({8, 3000}, torch::kCUDA);
  auto s = big.narrow(1, 0, 1000), t = big.narrow(1, 1500, 1000);  // row stride 3000
  auto k = forward_kl(s, t, 1.0, 1.0, true);
  auto r = forward_kl_reference(s, t, 1.0, 1.0, true);
  expect_close(k.kl, r.kl, 2e-5, 2e-5, "strided kl");
  expect_close(k.grad, r.grad, 1e-7, 1e-5, "strided grad");
  auto same = forward_kl(s, s, 1.0, 1.0, true);
  EXPECT_LT(same.kl.abs().max().item<double>(), 1e-5);
  EXPECT_LT(same.grad.abs().max().item<double>(), 1e-7);
}

TEST(ForwardKlCuda, TopkKernelMatchesReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  struct Case {
    int64_t rows, vocab, k;
    torch::ScalarType student;
    double temperature;
  };
  const Case cases[] = {{37, 1000, 32, torch::kFloat32, 1.0},
                        {5, 131072, 512, torch::kBFloat16, 2.0},
                        {4, 300, 300, torch::kFloat32, 1.0},
                        {9, 50257, 1, torch::kFloat16, 1.0}};
  torch::manual_seed(7);
  for (const auto& c : cases) {
    const std::string what = "rows " + std::to_string(c.rows) + " V " + std::to_string(c.vocab) + " k " +
                             std::to_string(c.k) + " " + c10::toString(c.student);
    const auto opts = torch::TensorOptions().device(torch::kCUDA);
    auto s = (torch::randn({c.rows, c.vocab}, opts) * 4).to(c.student);
    auto t = torch::randn({c.rows, c.vocab}, opts) * 4 / c.temperature;
    auto top_k = t.topk(c.k, -1);
    auto vals = std::get<0>(top_k), ids = std::get<1>(top_k);
    auto rest = c.k == c.vocab ? torch::full({c.rows}, -INFINITY, opts)
                               : torch::logsumexp(t.scatter(1, ids, -INFINITY), -1);
    auto k = forward_kl_topk(s, vals, ids, rest, c.temperature, 0.37, true);
    auto r = forward_kl_topk_reference(s, vals, ids, rest, c.temperature, 0.37, true);
    expect_close(k.kl, r.kl, 2e-5, 2e-5, what + " kl");
    expect_close(k.grad, r.grad, 1e-7, c.student == torch::kFloat32 ? 1e-5 : 1e-2, what + " grad");
    EXPECT_TRUE(torch::equal(k.student_argmax, r.student_argmax)) << what;
    EXPECT_TRUE(torch::equal(k.teacher_argmax, r.teacher_argmax)) << what;
  }
}

}  // namespace
}  // namespace minipuzzle
