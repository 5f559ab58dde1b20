// Chunked KD losses against naive references that materialise the full
// [tokens x vocab] logits and differentiate with autograd: loss values,
// logged sums/counts, and gradients w.r.t. the student's normed hidden
// states and lm_head weight, for every loss, temperature, CE weight, chunk
// size and teacher source (model, logits, top-k).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../model/tiny_config.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/kd_loss.h"

namespace minipuzzle {
namespace {

using testing::tiny_config;
using torch::Tensor;

const std::vector<KdLoss> kLosses = {KdLoss::ForwardKl, KdLoss::ReverseKl, KdLoss::Jsd};

HybridLM make_model(uint64_t seed, int64_t hidden = 0, int64_t vocab = 0) {
  ModelConfig c = tiny_config();
  if (hidden) c.hidden_size = hidden;
  if (vocab) c.vocab_size = vocab;
  HybridLM m(c);
  m->init_random(seed);
  return m;
}

// Normed hidden states scaled so the logits (lm_head ~ N(0, 0.02)) are of
// order 1-3: peaked, non-trivial distributions.
Tensor hidden_states(int64_t b, int64_t l, int64_t d, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({b, l, d}) * 30.0;
}

Tensor targets_for(int64_t b, int64_t l, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {b, l}, torch::kLong);
}

// Per-token divergence, written the plain way.
Tensor ref_divergence(KdLoss loss, const Tensor& logp, const Tensor& logq) {
  auto p = logp.exp(), q = logq.exp();
  switch (loss) {
    case KdLoss::ForwardKl:
      return (p * (logp - logq)).sum(-1);
    case KdLoss::ReverseKl:
      return (q * (logq - logp)).sum(-1);
    case KdLoss::Jsd: {
      auto logm = (0.5 * (p + q)).log();
      return 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1);
    }
  }
  return {};
}

struct Outcome {
  double loss = 0, kd_sum = 0, ce_sum = 0;
  int64_t correct = 0, agree = 0;
  Tensor grad_x, grad_w;
};

void clear_grad(HybridLM& m) { m->lm_head_weights->weight.mutable_grad() = Tensor(); }

// Teacher given as full logits [N, V] (any temperature applied here) or as
// top-k buckets (values already tempered).
struct TeacherRef {
  Tensor logits;                     // full mode
  Tensor values, indices, rest_lse;  // top-k mode
};

Outcome reference(HybridLM& student, const Tensor& xs, const TeacherRef& teacher, const Tensor& targets,
                  const KdOptions& o) {
  clear_grad(student);
  auto x = xs.detach().clone().requires_grad_(true);
  auto& w = student->lm_head_weights->weight;
  const double t = o.temperature;
  auto z = torch::linear(x.reshape({-1, x.size(-1)}), w);
  auto logq = torch::log_softmax(z / t, -1);
  Tensor logp, div, teacher_argmax;
  if (teacher.logits.defined()) {
    logp = torch::log_softmax(teacher.logits / t, -1);
    div = ref_divergence(o.loss, logp, logq);
    teacher_argmax = teacher.logits.argmax(-1);
  } else {
    // k + 1 buckets: the student's rest is literally 1 - sum of its top-k.
    auto logq_k = logq.gather(1, teacher.indices);
    auto logq_r = (1 - logq_k.exp().sum(-1, true)).log();
    auto logq_b = torch::cat({logq_k, logq_r}, 1);
    auto logp_b = torch::log_softmax(torch::cat({teacher.values, teacher.rest_lse.unsqueeze(1)}, 1), 1);
    div = ref_divergence(o.loss, logp_b, logq_b);
    teacher_argmax = teacher.indices.gather(1, teacher.values.argmax(1, true)).squeeze(1);
  }
  auto tt = targets.reshape({-1});
  auto ce = torch::nn::functional::cross_entropy(
      z, tt, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto loss = t * t * div.mean() + o.ce_weight * ce.mean();
  loss.backward();
  Outcome r;
  r.loss = loss.item<double>();
  r.kd_sum = div.sum().item<double>();
  r.ce_sum = ce.sum().item<double>();
  auto greedy = z.argmax(-1);
  r.correct = greedy.eq(tt).sum().item<int64_t>();
  r.agree = greedy.eq(teacher_argmax).sum().item<int64_t>();
  r.grad_x = x.grad().clone();
  r.grad_w = w.grad().clone();
  clear_grad(student);
  return r;
}

// Runs one of ours with a fresh leaf for the student's hidden states.
template <typename F>
Outcome ours(HybridLM& student, const Tensor& xs, F&& call) {
  clear_grad(student);
  auto x = xs.detach().clone().requires_grad_(true);
  KdResult kr = call(x);
  EXPECT_TRUE(kr.loss.requires_grad());
  EXPECT_EQ(kr.loss.dim(), 0);
  EXPECT_EQ(kr.loss.scalar_type(), torch::kFloat32);
  kr.loss.backward();
  Outcome r;
  r.loss = kr.loss.item<double>();
  EXPECT_EQ(kr.sums.device(), kr.loss.device());
  const KdSums sums = kr.host_sums();
  r.kd_sum = sums.kd_sum;
  r.ce_sum = sums.ce_sum;
  r.correct = sums.correct;
  r.agree = sums.agree;
  EXPECT_EQ(kr.tokens, xs.numel() / xs.size(-1));
  r.grad_x = x.grad().clone();
  r.grad_w = student->lm_head_weights->weight.grad().clone();
  clear_grad(student);
  return r;
}

double max_abs(const Tensor& t) { return t.abs().max().item<double>(); }

void expect_tensor_close(const Tensor& a, const Tensor& ref, double rtol, const std::string& what) {
  ASSERT_TRUE(a.defined()) << what;
  ASSERT_EQ(a.sizes(), ref.sizes()) << what;
  const double err = max_abs(a.to(torch::kDouble) - ref.to(torch::kDouble));
  const double scale = std::max(max_abs(ref), 1e-6);
  EXPECT_LE(err, rtol * scale) << what << ": max |diff| " << err << ", max |ref| " << scale;
}

void expect_same(const Outcome& a, const Outcome& ref, const std::string& what, double loss_rtol = 1e-6,
                 double grad_rtol = 1e-5) {
  EXPECT_NEAR(a.loss, ref.loss, loss_rtol * std::abs(ref.loss) + 1e-9) << what;
  EXPECT_NEAR(a.kd_sum, ref.kd_sum, loss_rtol * std::abs(ref.kd_sum) + 1e-8) << what;
  EXPECT_NEAR(a.ce_sum, ref.ce_sum, loss_rtol * std::abs(ref.ce_sum) + 1e-8) << what;
  EXPECT_EQ(a.correct, ref.correct) << what;
  EXPECT_EQ(a.agree, ref.agree) << what;
  expect_tensor_close(a.grad_x, ref.grad_x, grad_rtol, what + " grad hidden");
  expect_tensor_close(a.grad_w, ref.grad_w, grad_rtol, what + " grad lm_head");
}

std::string label(KdLoss loss, double t, double cw, int64_t chunk) {
  return kd_loss_name(loss) + " T=" + std::to_string(t) + " ce=" + std::to_string(cw) +
         " chunk=" + std::to_string(chunk);
}

TEST(KdLoss, ParsesNames) {
  for (KdLoss l : kLosses) EXPECT_EQ(parse_kd_loss(kd_loss_name(l)), l);
  EXPECT_EQ(parse_kd_loss("forward_kl"), KdLoss::ForwardKl);
  EXPECT_EQ(parse_kd_loss("reverse_kl"), KdLoss::ReverseKl);
  EXPECT_EQ(parse_kd_loss("jsd"), KdLoss::Jsd);
  EXPECT_THROW(parse_kd_loss("kl"), InputError);
  EXPECT_THROW(parse_kd_loss(""), InputError);
  EXPECT_THROW(parse_kd_loss("Forward_KL"), InputError);
}

// 10 tokens in chunks of 3 (and 1, 4, 10, auto) vs the full reference,
// teacher given as a model (another hidden size) and as precomputed logits.
TEST(KdLoss, MatchesReferenceForEveryLossTemperatureAndCe) {
  HybridLM student = make_model(1);
  HybridLM teacher = make_model(2, /*hidden=*/40);
  const int64_t vocab = student->config().vocab_size;
  Tensor xs = hidden_states(2, 5, 32, 11);
  Tensor xt = hidden_states(2, 5, 40, 12);
  Tensor targets = targets_for(2, 5, vocab, 13);
  Tensor teacher_logits;
  {
    torch::NoGradGuard ng;
    teacher_logits = teacher->lm_head(xt.reshape({-1, 40}));
  }
  for (KdLoss loss : kLosses)
    for (double t : {1.0, 2.0})
      for (double cw : {0.0, 0.7}) {
        KdOptions o;
        o.loss = loss;
        o.temperature = t;
        o.ce_weight = cw;
        Outcome ref = reference(student, xs, TeacherRef{teacher_logits}, targets, o);
        EXPECT_GT(ref.kd_sum, 1e-3);  // a real divergence, not a degenerate case
        for (int64_t chunk : {3, 1, 4, 10, 0}) {
          o.chunk_tokens = chunk;
          Outcome online = ours(student, xs, [&](const Tensor& x) {
            return kd_loss_online(student, x, teacher, xt, targets, o);
          });
          expect_same(online, ref, "online " + label(loss, t, cw, chunk));
          Outcome logits = ours(student, xs, [&](const Tensor& x) {
            return kd_loss_logits(student, x, teacher_logits.view({2, 5, vocab}), targets, o);
          });
          expect_same(logits, ref, "logits " + label(loss, t, cw, chunk));
        }
      }
}

// logit_divergence (the fused kernels' definition, forward_kl.h) computes the
// divergences the trainer's LibTorch path does.
TEST(KdLoss, LogitDivergenceAgreesWithTheTrainersDefinition) {
  HybridLM student = make_model(1);
  HybridLM teacher = make_model(2, /*hidden=*/40);
  const int64_t vocab = student->config().vocab_size;
  Tensor xs = hidden_states(2, 5, 32, 21);
  Tensor xt = hidden_states(2, 5, 40, 22);
  torch::NoGradGuard ng;
  Tensor teacher_logits = teacher->lm_head(xt.reshape({-1, 40}));
  Tensor student_logits = student->lm_head(xs.reshape({-1, 32}));
  for (KdLoss loss : kLosses) {
    KdOptions o;
    o.loss = loss;
    o.temperature = 1.6;
    const KdResult trainer = kd_loss_logits(student, xs, teacher_logits.view({2, 5, vocab}), Tensor(), o);
    const ForwardKlResult fused = logit_divergence_reference(student_logits, teacher_logits, loss, 1.6, 1.0, false);
    const double kd_sum = trainer.host_sums().kd_sum;
    EXPECT_NEAR(fused.kl.sum().item<double>(), kd_sum, 1e-5 * kd_sum) << kd_loss_name(loss);
  }
}

TEST(KdLoss, ForwardKlGradientFollowsTheTSquaredConvention) {
  // loss = T^2 * mean over tokens of KL(p_T || q_T) (Hinton et al.), so
  // d loss / d z = T (q_T - p_T) / N for the student's logits z, and the
  // gradient keeps its order as T grows: a factor T instead of T^2 would
  // make it shrink like 1/T, none at all like 1/T^2.
  HybridLM student = make_model(1), teacher = make_model(2);
  Tensor xs = hidden_states(2, 5, 32, 21), xt = hidden_states(2, 5, 32, 22);
  auto definition = [&](double t) {
    torch::NoGradGuard ng;
    const Tensor w = student->lm_head_weights->weight;
    const Tensor z = torch::linear(xs.reshape({-1, 32}), w);
    const Tensor zt = teacher->lm_head(xt.reshape({-1, 32}));
    const Tensor dz = t * (torch::softmax(z / t, -1) - torch::softmax(zt / t, -1)) / z.size(0);
    return dz.matmul(w).reshape(xs.sizes());
  };
  KdOptions o;
  o.chunk_tokens = 3;
  Outcome g1 = ours(student, xs, [&](const Tensor& x) { return kd_loss_online(student, x, teacher, xt, {}, o); });
  o.temperature = 4.0;
  Outcome g4 = ours(student, xs, [&](const Tensor& x) { return kd_loss_online(student, x, teacher, xt, {}, o); });
  const Tensor d1 = definition(1.0), d4 = definition(4.0);
  EXPECT_LE(max_abs(g1.grad_x - d1), 1e-4 * max_abs(d1));
  EXPECT_LE(max_abs(g4.grad_x - d4), 1e-4 * max_abs(d4));
  const double want = max_abs(d4) / max_abs(d1);
  EXPECT_NEAR(max_abs(g4.grad_x) / max_abs(g1.grad_x), want, 1e-4 * want);
}

TEST(KdLoss, SameDistributionGivesZeroLossAndGradient) {
  HybridLM student = make_model(3);
  Tensor xs = hidden_states(2, 5, 32, 31);
  Tensor targets = targets_for(2, 5, student->config().vocab_size, 32);
  for (KdLoss loss : kLosses)
    for (double t : {1.0, 2.0}) {
      KdOptions o;
      o.loss = loss;
      o.temperature = t;
      o.chunk_tokens = 3;
      Outcome r = ours(student, xs, [&](const Tensor& x) { return kd_loss_online(student, x, student, xs, targets, o); });
      const std::string what = label(loss, t, 0, 3);
      EXPECT_NEAR(r.loss, 0.0, 1e-6) << what;
      EXPECT_NEAR(r.kd_sum, 0.0, 1e-5) << what;
      EXPECT_EQ(r.agree, 10) << what;
      EXPECT_LE(max_abs(r.grad_x), 1e-6) << what;
      EXPECT_LE(max_abs(r.grad_w), 1e-6) << what;
    }
}

TEST(KdLoss, TeacherTopKMatchesSortedLogits) {
  torch::manual_seed(41);
  Tensor logits = torch::randn({7, 97}) * 3;
  for (double t : {1.0, 2.0})
    for (int64_t k : {1, 5, 96, 97}) {
      TeacherTopK tk = teacher_topk(logits.view({7, 1, 97}), k, t);
      ASSERT_EQ(tk.values.sizes(), (std::vector<int64_t>{7, 1, k}));
      ASSERT_EQ(tk.indices.sizes(), (std::vector<int64_t>{7, 1, k}));
      ASSERT_EQ(tk.rest_lse.sizes(), (std::vector<int64_t>{7, 1}));
      auto [sorted, order] = (logits / t).sort(-1, /*descending=*/true);
      EXPECT_TRUE(torch::equal(tk.indices.view({7, k}), order.narrow(1, 0, k)));
      EXPECT_TRUE(torch::allclose(tk.values.view({7, k}), sorted.narrow(1, 0, k)));
      if (k == 97) {
        EXPECT_TRUE(torch::all(torch::isneginf(tk.rest_lse)).item<bool>());
      } else {
        auto rest = torch::logsumexp(sorted.narrow(1, k, 97 - k), 1);
        EXPECT_TRUE(torch::allclose(tk.rest_lse.view({7}), rest, 1e-6, 1e-6));
      }
    }
  EXPECT_THROW(teacher_topk(logits, 0), InputError);
  EXPECT_THROW(teacher_topk(logits, 98), InputError);
  EXPECT_THROW(teacher_topk(logits, 5, 0.0), InputError);
}

// k = vocab: no rest bucket; every loss equals its full-vocabulary version.
TEST(KdLoss, TopKWithFullVocabularyEqualsFullLoss) {
  HybridLM student = make_model(1), teacher = make_model(2);
  const int64_t vocab = student->config().vocab_size;
  Tensor xs = hidden_states(2, 5, 32, 51), xt = hidden_states(2, 5, 32, 52);
  Tensor targets = targets_for(2, 5, vocab, 53);
  Tensor teacher_logits;
  {
    torch::NoGradGuard ng;
    teacher_logits = teacher->lm_head(xt);  // [2, 5, V]
  }
  for (KdLoss loss : kLosses)
    for (double t : {1.0, 2.0})
      for (double cw : {0.0, 0.5}) {
        KdOptions o;
        o.loss = loss;
        o.temperature = t;
        o.ce_weight = cw;
        o.chunk_tokens = 3;
        Outcome full = ours(student, xs, [&](const Tensor& x) {
          return kd_loss_logits(student, x, teacher_logits, targets, o);
        });
        TeacherTopK tk = teacher_topk(teacher_logits, vocab, t);
        Outcome topk = ours(student, xs, [&](const Tensor& x) {
          return kd_loss_topk(student, x, tk.values, tk.indices, tk.rest_lse, targets, o);
        });
        expect_same(topk, full, "top-k=V " + label(loss, t, cw, 3));
      }
}

// Small k vs the k+1-bucket formula written naively (rest = 1 - sum).
TEST(KdLoss, TopKMatchesBucketReference) {
  HybridLM student = make_model(4), teacher = make_model(5);
  const int64_t vocab = student->config().vocab_size;
  Tensor xs = hidden_states(2, 5, 32, 61), xt = hidden_states(2, 5, 32, 62);
  Tensor targets = targets_for(2, 5, vocab, 63);
  Tensor teacher_logits;
  {
    torch::NoGradGuard ng;
    teacher_logits = teacher->lm_head(xt.reshape({-1, 32}));  // [10, V]
  }
  for (int64_t k : {1, 5, 20})
    for (KdLoss loss : kLosses)
      for (double t : {1.0, 2.0})
        for (double cw : {0.0, 0.7}) {
          KdOptions o;
          o.loss = loss;
          o.temperature = t;
          o.ce_weight = cw;
          TeacherTopK tk = teacher_topk(teacher_logits, k, t);
          Outcome ref = reference(student, xs, TeacherRef{{}, tk.values, tk.indices, tk.rest_lse}, targets, o);
          EXPECT_GT(ref.kd_sum, 1e-4);
          for (int64_t chunk : {3, 0}) {
            o.chunk_tokens = chunk;
            Outcome r = ours(student, xs, [&](const Tensor& x) {
              return kd_loss_topk(student, x, tk.values.view({2, 5, k}), tk.indices.view({2, 5, k}),
                                  tk.rest_lse.view({2, 5}), targets, o);
            });
            expect_same(r, ref, "top-k=" + std::to_string(k) + " " + label(loss, t, cw, chunk), 1e-6, 1e-5);
          }
        }
}

// Mean over tokens: two half-batches each scaled by 1/2 accumulate to the
// full batch's gradient.
TEST(KdLoss, GradientAccumulationOfHalvesEqualsFullBatch) {
  HybridLM student = make_model(1), teacher = make_model(2);
  Tensor xs = hidden_states(2, 5, 32, 71), xt = hidden_states(2, 5, 32, 72);
  Tensor targets = targets_for(2, 5, student->config().vocab_size, 73);
  KdOptions o;
  o.ce_weight = 0.3;
  o.chunk_tokens = 2;
  Outcome full = ours(student, xs, [&](const Tensor& x) { return kd_loss_online(student, x, teacher, xt, targets, o); });
  clear_grad(student);
  auto x = xs.detach().clone().requires_grad_(true);
  double loss = 0;
  for (int64_t i = 0; i < 2; ++i) {
    KdResult r = kd_loss_online(student, x.narrow(0, i, 1), teacher, xt.narrow(0, i, 1), targets.narrow(0, i, 1), o);
    (r.loss * 0.5).backward();
    loss += 0.5 * r.loss.item<double>();
  }
  EXPECT_NEAR(loss, full.loss, 1e-6 * full.loss);
  expect_tensor_close(x.grad(), full.grad_x, 1e-5, "accumulated grad hidden");
  expect_tensor_close(student->lm_head_weights->weight.grad(), full.grad_w, 1e-5, "accumulated grad lm_head");
  clear_grad(student);
}

TEST(KdLoss, NoGradAndFrozenInputs) {
  HybridLM student = make_model(1), teacher = make_model(2);
  Tensor xs = hidden_states(2, 5, 32, 81), xt = hidden_states(2, 5, 32, 82);
  Tensor targets = targets_for(2, 5, student->config().vocab_size, 83);
  KdOptions o;
  o.chunk_tokens = 3;
  o.ce_weight = 0.5;
  Outcome ref = ours(student, xs, [&](const Tensor& x) { return kd_loss_online(student, x, teacher, xt, targets, o); });
  {
    torch::NoGradGuard ng;
    auto x = xs.clone().requires_grad_(true);
    KdResult r = kd_loss_online(student, x, teacher, xt, targets, o);
    EXPECT_FALSE(r.loss.requires_grad());
    EXPECT_NEAR(r.loss.item<double>(), ref.loss, 1e-6 * ref.loss);
    EXPECT_EQ(r.host_sums().correct, ref.correct);
  }
  // Hidden states without grad: only lm_head gets one.
  {
    KdResult r = kd_loss_online(student, xs, teacher, xt, targets, o);
    ASSERT_TRUE(r.loss.requires_grad());
    r.loss.backward();
    expect_tensor_close(student->lm_head_weights->weight.grad(), ref.grad_w, 1e-5, "lm_head only");
    clear_grad(student);
  }
  // Frozen lm_head: only the hidden states get one.
  {
    student->lm_head_weights->weight.requires_grad_(false);
    auto x = xs.clone().requires_grad_(true);
    KdResult r = kd_loss_online(student, x, teacher, xt, targets, o);
    r.loss.backward();
    expect_tensor_close(x.grad(), ref.grad_x, 1e-5, "hidden only");
    EXPECT_FALSE(student->lm_head_weights->weight.grad().defined());
    student->lm_head_weights->weight.requires_grad_(true);
  }
  // Nothing requires grad: a plain tensor.
  {
    student->lm_head_weights->weight.requires_grad_(false);
    KdResult r = kd_loss_online(student, xs, teacher, xt, targets, o);
    EXPECT_FALSE(r.loss.requires_grad());
    EXPECT_NEAR(r.loss.item<double>(), ref.loss, 1e-6 * ref.loss);
    student->lm_head_weights->weight.requires_grad_(true);
  }
}

// The gradient flows on into the student's layers like any other loss.
TEST(KdLoss, BackpropagatesIntoTheStudentModel) {
  HybridLM student = make_model(1), teacher = make_model(2);
  torch::manual_seed(91);
  Tensor tokens = torch::randint(student->config().vocab_size, {2, 6}, torch::kLong);
  Tensor xt;
  {
    torch::NoGradGuard ng;
    xt = teacher->forward_hidden(tokens);
  }
  KdOptions o;
  o.chunk_tokens = 5;
  Tensor normed = student->forward_hidden(tokens);
  KdResult r = kd_loss_online(student, normed, teacher, xt, {}, o);
  r.loss.backward();
  // Reference: full logits through the model with autograd.
  std::vector<Tensor> ours_grads;
  for (auto& p : student->parameters()) {
    ASSERT_TRUE(p.grad().defined());
    ours_grads.push_back(p.grad().clone());
    p.mutable_grad() = Tensor();
  }
  auto logq = torch::log_softmax(student->forward(tokens), -1);
  auto logp = torch::log_softmax(teacher->lm_head(xt), -1);
  auto ref = (logp.exp() * (logp - logq)).sum(-1).mean();
  ref.backward();
  // Unscaled random models give near-uniform distributions and a small KL
  // (~0.01) made of cancelling terms: fp32 summation order alone moves it
  // by a few 1e-6 relative.
  EXPECT_NEAR(r.loss.item<double>(), ref.item<double>(), 1e-5 * ref.item<double>());
  size_t i = 0;
  for (auto& p : student->parameters()) expect_tensor_close(ours_grads[i++], p.grad(), 2e-5, "model parameter");
}

TEST(KdLoss, Bf16StudentIsCloseToFp32) {
  HybridLM student = make_model(1), teacher = make_model(2);
  Tensor xs = hidden_states(2, 5, 32, 101), xt = hidden_states(2, 5, 32, 102);
  KdOptions o;
  o.chunk_tokens = 3;
  Outcome f32 = ours(student, xs, [&](const Tensor& x) { return kd_loss_online(student, x, teacher, xt, {}, o); });
  student->to(torch::kBFloat16);
  auto x = xs.to(torch::kBFloat16).requires_grad_(true);
  KdResult r = kd_loss_online(student, x, teacher, xt, {}, o);
  EXPECT_EQ(r.loss.scalar_type(), torch::kFloat32);
  r.loss.backward();
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(student->lm_head_weights->weight.grad().scalar_type(), torch::kBFloat16);
  EXPECT_NEAR(r.loss.item<double>(), f32.loss, 0.05 * f32.loss);
  expect_tensor_close(x.grad().to(torch::kFloat32), f32.grad_x, 0.05, "bf16 grad hidden");
  expect_tensor_close(student->lm_head_weights->weight.grad().to(torch::kFloat32), f32.grad_w, 0.05,
                      "bf16 grad lm_head");
}

TEST(KdLoss, RejectsBadInput) {
  HybridLM student = make_model(1), teacher = make_model(2);
  HybridLM other_vocab = make_model(3, 0, 101);
  Tensor xs = hidden_states(2, 5, 32, 111), xt = hidden_states(2, 5, 32, 112);
  Tensor targets = targets_for(2, 5, 97, 113);
  KdOptions o;
  EXPECT_THROW(kd_loss_online(student, xs, other_vocab, xt, targets, o), InputError);
  EXPECT_THROW(kd_loss_logits(student, xs, torch::zeros({2, 5, 101}), targets, o), InputError);
  EXPECT_THROW(kd_loss_logits(student, xs, torch::zeros({2, 4, 97}), targets, o), InputError);
  EXPECT_THROW(kd_loss_online(student, xs, teacher, xt.narrow(1, 0, 4), targets, o), InputError);
  EXPECT_THROW(kd_loss_online(student, xs, teacher, xt, targets.narrow(1, 0, 4), o), InputError);
  EXPECT_THROW(kd_loss_online(student, hidden_states(2, 5, 16, 1), teacher, xt, targets, o), InputError);
  KdOptions bad = o;
  bad.ce_weight = 1.0;
  EXPECT_THROW(kd_loss_online(student, xs, teacher, xt, Tensor(), bad), InputError);
  bad = o;
  bad.temperature = 0.0;
  EXPECT_THROW(kd_loss_online(student, xs, teacher, xt, targets, bad), InputError);
  bad = o;
  bad.ce_weight = -1;
  EXPECT_THROW(kd_loss_online(student, xs, teacher, xt, targets, bad), InputError);
  bad = o;
  bad.chunk_tokens = -1;
  EXPECT_THROW(kd_loss_online(student, xs, teacher, xt, targets, bad), InputError);
  TeacherTopK tk = teacher_topk(torch::randn({10, 97}), 4);
  EXPECT_THROW(kd_loss_topk(student, xs, tk.values, tk.indices.narrow(1, 0, 3), tk.rest_lse, targets, o), InputError);
  EXPECT_THROW(kd_loss_topk(student, xs, tk.values.narrow(0, 0, 9), tk.indices.narrow(0, 0, 9), tk.rest_lse, targets, o),
               InputError);
  // Without targets: no CE, no accuracy, still a loss.
  KdResult r = kd_loss_online(student, xs, teacher, xt, Tensor(), o);
  const KdSums sums = r.host_sums();
  EXPECT_EQ(sums.ce_sum, 0.0);
  EXPECT_EQ(sums.correct, 0);
  EXPECT_EQ(r.tokens, 10);
  EXPECT_GT(sums.kd_sum, 0.0);
}

}  // namespace
}  // namespace minipuzzle
