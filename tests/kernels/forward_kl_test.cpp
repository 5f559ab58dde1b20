#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gpu_test_util.h"
#include "minipuzzle/forward_kl.h"

namespace minipuzzle {
namespace {

using testing::expect_close;

// Each divergence per row, written out from log p (teacher) and log q
// (student) as in its definition (no guards: the tests' rows have no zeros).
torch::Tensor divergence_definition(KdLoss loss, const torch::Tensor& logp, const torch::Tensor& logq) {
  const auto p = logp.exp(), q = logq.exp();
  if (loss == KdLoss::ForwardKl) return (p * (logp - logq)).sum(-1);
  if (loss == KdLoss::ReverseKl) return (q * (logq - logp)).sum(-1);
  const auto logm = ((p + q) / 2).log();
  return 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1);
}

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

// Reverse KL and JSD: the reference's value against the definition in
// double, its gradient against autograd of that definition.
TEST(ForwardKl, ReverseKlAndJsdReferencesMatchAutograd) {
  torch::manual_seed(12);
  const double T = 1.3, scale = 0.4;
  auto s = torch::randn({4, 60}) * 3, t = s * 0.7 + torch::randn({4, 60}) * 2;
  for (const KdLoss loss : {KdLoss::ReverseKl, KdLoss::Jsd}) {
    const std::string what = loss == KdLoss::Jsd ? "jsd" : "reverse kl";
    auto r = logit_divergence_reference(s, t, loss, T, scale, true);
    auto sd = (s.to(torch::kFloat64) / T).requires_grad_(true);
    auto logq = torch::log_softmax(sd, -1), logp = torch::log_softmax(t.to(torch::kFloat64) / T, -1);
    auto d = divergence_definition(loss, logp, logq);
    d.sum().backward();
    expect_close(r.kl, d.detach(), 1e-6, 1e-5, what + " value");
    expect_close(r.grad, sd.grad() * scale, 1e-7, 1e-5, what + " grad");
    EXPECT_GT(r.grad.abs().max().item<double>(), 1e-2) << what;  // not a vanishing gradient
    auto same = logit_divergence_reference(s, s, loss, T, scale, true);
    EXPECT_LT(same.kl.abs().max().item<double>(), 1e-6) << what;
    EXPECT_LT(same.grad.abs().max().item<double>(), 1e-7) << what;
  }
  // Forward KL is forward_kl_reference.
  auto f = logit_divergence_reference(s, t, KdLoss::ForwardKl, T, scale, true);
  expect_close(f.grad, forward_kl_reference(s, t, T, scale, true).grad, 0, 0, "forward kl");
}

// The top-k references for every divergence: the value against the
// (k + 1)-bucket definition in double, the gradient against autograd of it.
TEST(ForwardKl, TopkReferencesMatchAutogradOfTheBuckets) {
  torch::manual_seed(14);
  const double T = 1.4, scale = 0.6;
  const int64_t rows = 4, vocab = 70, k = 9;
  auto s = torch::randn({rows, vocab}) * 3;
  auto t = (s * 0.6 + torch::randn({rows, vocab}) * 2) / T;  // tempered, overlapping the student
  auto top = t.topk(k, -1);
  auto perm = torch::randperm(k);
  auto vals = std::get<0>(top).index_select(1, perm), ids = std::get<1>(top).index_select(1, perm);
  auto rest = torch::logsumexp(t.scatter(1, ids, -INFINITY), -1);
  for (const KdLoss loss : {KdLoss::ForwardKl, KdLoss::ReverseKl, KdLoss::Jsd}) {
    const std::string what = loss == KdLoss::Jsd ? "jsd" : loss == KdLoss::ReverseKl ? "reverse kl" : "forward kl";
    auto r = topk_divergence_reference(s, vals, ids, rest, loss, T, scale, true);
    auto sd = (s.to(torch::kFloat64) / T).requires_grad_(true);
    auto logq_all = torch::log_softmax(sd, -1);
    auto mask = torch::zeros({rows, vocab}, torch::kBool).scatter(1, ids, true);
    auto logq = torch::cat({logq_all.gather(1, ids), torch::logsumexp(logq_all.masked_fill(mask, -INFINITY), 1, true)}, 1);
    auto logp = torch::log_softmax(torch::cat({vals, rest.unsqueeze(1)}, 1).to(torch::kFloat64), 1);
    auto d = divergence_definition(loss, logp, logq);
    d.sum().backward();
    expect_close(r.kl, d.detach(), 1e-6, 1e-5, what + " value");
    expect_close(r.grad, sd.grad() * scale, 1e-7, 1e-5, what + " grad");
    EXPECT_GT(r.grad.abs().max().item<double>(), 1e-2) << what;
    EXPECT_TRUE(torch::equal(r.teacher_argmax, ids.gather(1, vals.argmax(1, true)).squeeze(1))) << what;
    // With every id (k = V, empty rest) it is the full-vocabulary divergence.
    auto all = (t).topk(vocab, -1);
    auto every = topk_divergence_reference(s, std::get<0>(all), std::get<1>(all), torch::full({rows}, -INFINITY), loss,
                                           T, scale, true);
    auto full = logit_divergence_reference(s, t * T, loss, T, scale, true);
    expect_close(every.kl, full.kl, 1e-5, 1e-5, what + " k = V value");
    expect_close(every.grad, full.grad, 1e-6, 1e-5, what + " k = V grad");
  }
  // forward_kl_topk_reference is the forward-KL case.
  expect_close(forward_kl_topk_reference(s, vals, ids, rest, T, scale, true).grad,
               topk_divergence_reference(s, vals, ids, rest, KdLoss::ForwardKl, T, scale, true).grad, 0, 0, "fkl");
}

// The kernels for reverse KL and JSD against the reference (forward KL: below).
TEST(ForwardKlCuda, ReverseKlAndJsdKernelsMatchReference) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  torch::manual_seed(13);
  struct Case {
    int64_t rows, vocab;
    torch::ScalarType dtype;
    double temperature;
  };
  const Case cases[] = {{37, 1000, torch::kFloat32, 1.0}, {5, 131072, torch::kBFloat16, 2.0},
                        {3, 7, torch::kFloat16, 0.5}};
  for (const KdLoss loss : {KdLoss::ReverseKl, KdLoss::Jsd})
    for (const auto& c : cases) {
      const std::string what = std::string(loss == KdLoss::Jsd ? "jsd" : "reverse kl") + " V " +
                               std::to_string(c.vocab) + " " + c10::toString(c.dtype);
      auto s = (torch::randn({c.rows, c.vocab}, torch::kCUDA) * 4).to(c.dtype);
      // Overlapping distributions (independent ones saturate JSD, whose gradient then vanishes).
      auto t = (s.to(torch::kFloat32) * 0.7 + torch::randn({c.rows, c.vocab}, torch::kCUDA) * 2).to(c.dtype);
      auto k = logit_divergence(s, t, loss, c.temperature, 0.37, true);
      auto r = logit_divergence_reference(s, t, loss, c.temperature, 0.37, true);
      expect_close(k.kl, r.kl, 2e-5, 2e-5, what + " value");
      expect_close(k.grad, r.grad, 1e-7, c.dtype == torch::kFloat32 ? 1e-4 : 1e-2, what + " grad");
      EXPECT_TRUE(torch::equal(k.student_argmax, r.student_argmax)) << what;
    }
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
    for (const KdLoss loss : {KdLoss::ForwardKl, KdLoss::ReverseKl, KdLoss::Jsd}) {
      const std::string w = what + (loss == KdLoss::Jsd ? " jsd" : loss == KdLoss::ReverseKl ? " rkl" : " fkl");
      auto k = topk_divergence(s, vals, ids, rest, loss, c.temperature, 0.37, true);
      auto r = topk_divergence_reference(s, vals, ids, rest, loss, c.temperature, 0.37, true);
      expect_close(k.kl, r.kl, 2e-5, 2e-5, w + " kl");
      // Reverse KL and JSD: fp32 rounding of the centring (see the emulated test).
      const bool centred = loss != KdLoss::ForwardKl;
      expect_close(k.grad, r.grad, centred ? 5e-7 : 1e-7,
                   c.student != torch::kFloat32 ? 1e-2 : centred ? 1e-4 : 1e-5, w + " grad");
      EXPECT_TRUE(torch::equal(k.student_argmax, r.student_argmax)) << w;
      EXPECT_TRUE(torch::equal(k.teacher_argmax, r.teacher_argmax)) << w;
    }
  }
}

}  // namespace
}  // namespace minipuzzle
