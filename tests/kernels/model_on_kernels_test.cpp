// The whole model and a distillation step on CUDA: the kernels in place of
// the references change nothing beyond float tolerance.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "gpu_test_util.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/kd_loss.h"
#include "tiny_config.h"

namespace minipuzzle {
namespace {

using testing::expect_close;
using testing::tiny_config;
using testing::with_references;

struct Step {
  torch::Tensor loss;
  std::map<std::string, torch::Tensor> grads;
  KdSums kd;
};

std::map<std::string, torch::Tensor> take_grads(HybridLM& m) {
  std::map<std::string, torch::Tensor> g;
  for (auto& p : m->named_parameters()) {
    if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
    p.value().mutable_grad() = torch::Tensor();
  }
  return g;
}

// Backpropagates a distillation loss into the student and keeps the result.
Step kd_step(HybridLM& student, KdResult kd) {
  Step s;
  kd.loss.backward();
  s.loss = kd.loss.detach();
  s.grads = take_grads(student);
  s.kd = kd.host_sums();
  return s;
}

// A tiny teacher (M*-M-M-) and student (M-M-) with random weights, on CUDA.
std::pair<HybridLM, HybridLM> cuda_teacher_and_student(uint64_t seed) {
  HybridLM teacher(tiny_config("M*-M-M-", 2)), student(tiny_config("M-M-", 2));
  teacher->init_random(seed);
  student->init_random(seed + 1);
  teacher->to(torch::kCUDA);
  student->to(torch::kCUDA);
  return {teacher, student};
}

TEST(ModelOnKernels, ForwardAndBackwardMatchTheReferencePath) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  const bool ssd_was = ssd_scan_kernel_enabled();
  set_ssd_scan_kernel_enabled(true);  // every kernel, the SSD scan's too
  HybridLM m(tiny_config("M*-MM-", 2));
  m->init_random(41);
  m->to(torch::kCUDA);
  auto tokens = torch::randint(0, 97, {2, 45}, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
  auto step = [&] {
    Step s;
    auto logits = m->forward(tokens);
    s.loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 97}).narrow(0, 0, 89),
                                                  tokens.reshape({-1}).narrow(0, 1, 89));
    s.loss.backward();
    s.grads = take_grads(m);
    s.loss = logits.detach();
    return s;
  };
  const Step k = step();
  const Step r = with_references(step);
  expect_close(k.loss, r.loss, 1e-5, 1e-5, "logits");
  ASSERT_EQ(k.grads.size(), r.grads.size());
  for (const auto& [name, g] : r.grads) expect_close(k.grads.at(name), g, 1e-6, 1e-4, "grad " + name);
  set_ssd_scan_kernel_enabled(ssd_was);
}

TEST(ModelOnKernels, DistillationStepMatchesTheReferencePath) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  const auto models = cuda_teacher_and_student(42);
  HybridLM teacher = models.first, student = models.second;
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA);
  auto tokens = torch::randint(0, 97, {2, 33}, opts), targets = torch::randint(0, 97, {2, 33}, opts);
  // Forward KL at two temperatures, reverse KL and JSD (all fused kernels on CUDA).
  const std::pair<KdLoss, double> runs[] = {
      {KdLoss::ForwardKl, 1.0}, {KdLoss::ForwardKl, 2.0}, {KdLoss::ReverseKl, 1.5}, {KdLoss::Jsd, 1.0}};
  for (const auto& run : runs) {
    const double temperature = run.second;
    KdOptions o;
    o.loss = run.first;
    o.temperature = temperature;
    o.ce_weight = 0.25;
    o.chunk_tokens = 16;  // several chunks, the last one short
    auto step = [&] {
      torch::Tensor xt;
      {
        torch::NoGradGuard ng;
        xt = teacher->forward_hidden(tokens);
      }
      return kd_step(student, kd_loss_online(student, student->forward_hidden(tokens), teacher, xt, targets, o));
    };
    const Step k = step();
    const Step r = with_references(step);
    const std::string what = kd_loss_name(o.loss) + " T " + std::to_string(temperature);
    expect_close(k.loss, r.loss, 1e-6, 1e-5, what + " loss");
    EXPECT_NEAR(k.kd.kd_sum, r.kd.kd_sum, 1e-5 * std::abs(r.kd.kd_sum) + 1e-6) << what;
    EXPECT_NEAR(k.kd.ce_sum, r.kd.ce_sum, 1e-5 * std::abs(r.kd.ce_sum)) << what;
    EXPECT_EQ(k.kd.correct, r.kd.correct) << what;
    EXPECT_EQ(k.kd.agree, r.kd.agree) << what;
    ASSERT_EQ(k.grads.size(), r.grads.size());
    for (const auto& [name, g] : r.grads) expect_close(k.grads.at(name), g, 1e-7, 1e-4, what + " grad " + name);
  }
}

TEST(ModelOnKernels, TopkDistillationStepMatchesTheReferencePath) {
  MINIPUZZLE_REQUIRE_CUDA_KERNELS();
  const auto models = cuda_teacher_and_student(44);
  HybridLM teacher = models.first, student = models.second;
  auto tokens = torch::randint(0, 97, {2, 33}, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
  KdOptions o;
  o.temperature = 1.5;
  o.chunk_tokens = 16;
  TeacherTopK top;
  {
    torch::NoGradGuard ng;
    top = teacher_topk(teacher->forward(tokens), 8, o.temperature);
  }
  for (const KdLoss loss : {KdLoss::ForwardKl, KdLoss::ReverseKl, KdLoss::Jsd}) {
    o.loss = loss;
    const std::string what = kd_loss_name(loss);
    auto step = [&] {
      return kd_step(student, kd_loss_topk(student, student->forward_hidden(tokens), top.values, top.indices,
                                           top.rest_lse, {}, o));
    };
    const Step k = step();
    const Step r = with_references(step);
    expect_close(k.loss, r.loss, 1e-6, 1e-5, what + " loss");
    EXPECT_EQ(k.kd.agree, r.kd.agree) << what;
    for (const auto& [name, g] : r.grads) expect_close(k.grads.at(name), g, 1e-7, 1e-4, what + " grad " + name);
  }
}

}  // namespace
}  // namespace minipuzzle
