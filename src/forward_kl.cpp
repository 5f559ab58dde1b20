#include "minipuzzle/forward_kl.h"

#include <cmath>
#include <limits>
#include <utility>

#include "kernels_build.h"
#include "minipuzzle/kernel_dispatch.h"
#if MINIPUZZLE_HAVE_CUDA_KERNELS
#include "cuda_ops/cuda_ops.h"
#endif

namespace minipuzzle {

namespace {

// The student's and the teacher's fp32 log-softmax at temperature T, after
// checking that both are [rows, vocab].
std::pair<torch::Tensor, torch::Tensor> log_softmax_pair(const torch::Tensor& student, const torch::Tensor& teacher,
                                                         double temperature, const char* op) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(), op, ": student ", student.sizes(),
              " and teacher ", teacher.sizes(), " must both be [rows, vocab]");
  const double inv_t = 1.0 / temperature;
  return {torch::log_softmax(student.to(torch::kFloat32) * inv_t, -1),
          torch::log_softmax(teacher.to(torch::kFloat32) * inv_t, -1)};
}

// Reverse KL or JSD over the last dimension (buckets: vocabulary entries,
// or top-k ids and a rest) from fp32 log q (student) and log p (teacher):
// the divergence per row and h with dD/ds'_j = q_j h_b(j), the gradient
// w.r.t. tempered student logit j in bucket b(j) (from dq_b/ds'_j =
// q_j ([j in b] - q_b)): h_b = dD/dq_b - sum_u q_u dD/dq_u. 0 log 0 terms
// vanish.
struct CentredTerms {
  torch::Tensor divergence, h;
};
CentredTerms centred_terms(KdLoss loss, const torch::Tensor& logq, const torch::Tensor& logp) {
  TORCH_CHECK(loss != KdLoss::ForwardKl, "centred_terms: reverse KL or JSD");
  const auto q = logq.exp();
  const auto zero = torch::zeros_like(q);
  CentredTerms c;
  if (loss == KdLoss::ReverseKl) {
    const auto a = torch::where(q > 0, logq - logp, zero);  // dD/dq - 1
    c.divergence = (q * a).sum(-1);
    c.h = a - c.divergence.unsqueeze(-1);
  } else {
    const auto logm = torch::logaddexp(logp, logq) - std::log(2.0);
    const auto p = logp.exp();
    const auto a = torch::where(q > 0, logq - logm, zero);  // 2 dD/dq - 1
    c.divergence = 0.5 * (torch::where(p > 0, p * (logp - logm), zero) + q * a).sum(-1);
    c.h = 0.5 * (a - (q * a).sum(-1, true));
  }
  return c;
}

}  // namespace

ForwardKlResult forward_kl_reference(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                                     double grad_scale, bool want_grad) {
  torch::NoGradGuard no_grad;
  const auto [logq, logp] = log_softmax_pair(student, teacher, temperature, "forward_kl");
  const auto p = logp.exp();
  ForwardKlResult r;
  r.kl = torch::where(p > 0, p * (logp - logq), torch::zeros_like(p)).sum(-1);
  if (want_grad) r.grad = ((logq.exp() - p) * grad_scale).to(student.scalar_type());
  r.student_argmax = student.argmax(-1);
  r.teacher_argmax = teacher.argmax(-1);
  return r;
}

ForwardKlResult logit_divergence_reference(const torch::Tensor& student, const torch::Tensor& teacher, KdLoss loss,
                                           double temperature, double grad_scale, bool want_grad) {
  if (loss == KdLoss::ForwardKl) return forward_kl_reference(student, teacher, temperature, grad_scale, want_grad);
  torch::NoGradGuard no_grad;
  const auto [logq, logp] = log_softmax_pair(student, teacher, temperature, "logit_divergence");
  const CentredTerms c = centred_terms(loss, logq, logp);
  ForwardKlResult r;
  r.kl = c.divergence;
  if (want_grad) r.grad = (logq.exp() * c.h * grad_scale).to(student.scalar_type());
  r.student_argmax = student.argmax(-1);
  r.teacher_argmax = teacher.argmax(-1);
  return r;
}

ForwardKlResult logit_divergence(const torch::Tensor& student, const torch::Tensor& teacher, KdLoss loss,
                                 double temperature, double grad_scale, bool want_grad) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(student) && cuda_ops::forward_kl_supported(student, teacher))
    return cuda_ops::logit_divergence(student, teacher, loss, temperature, grad_scale, want_grad);
#endif
  return logit_divergence_reference(student, teacher, loss, temperature, grad_scale, want_grad);
}

ForwardKlResult forward_kl(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                           double grad_scale, bool want_grad) {
  return logit_divergence(student, teacher, KdLoss::ForwardKl, temperature, grad_scale, want_grad);
}

ForwardKlResult topk_divergence_reference(const torch::Tensor& student, const torch::Tensor& values,
                                          const torch::Tensor& indices, const torch::Tensor& rest_lse, KdLoss loss,
                                          double temperature, double grad_scale, bool want_grad) {
  TORCH_CHECK(student.dim() == 2 && values.dim() == 2 && values.sizes() == indices.sizes() &&
                  values.size(0) == student.size(0) && rest_lse.numel() == student.size(0),
              "topk_divergence: student [rows, V], values and indices [rows, k], rest [rows]");
  torch::NoGradGuard no_grad;
  const int64_t k = values.size(1);
  const auto idx = indices.to(torch::kLong);
  const auto vals = values.to(torch::kFloat32);
  // Buckets: the k ids and the rest, for the teacher (given) and the student.
  const auto log_teacher = torch::log_softmax(torch::cat({vals, rest_lse.to(torch::kFloat32).reshape({-1, 1})}, 1), 1);
  const auto log_student = torch::log_softmax(student.to(torch::kFloat32) / temperature, -1);
  const auto student_at_ids = log_student.gather(1, idx);
  const auto student_rest = torch::logsumexp(
      log_student.scatter(1, idx, -std::numeric_limits<float>::infinity()), 1, /*keepdim=*/true);
  const auto log_student_b = torch::cat({student_at_ids, student_rest}, 1);
  ForwardKlResult r;
  if (loss == KdLoss::ForwardKl) {
    const auto p = log_teacher.exp();
    r.kl = torch::where(p > 0, p * (log_teacher - log_student_b), torch::zeros_like(p)).sum(-1);
    if (want_grad) {
      // Outside the ids: q_v (1 - p_rest / q_rest); at them: q_v - p_i.
      const auto rest_finite = torch::where(torch::isinf(student_rest), torch::zeros_like(student_rest), student_rest);
      auto g = log_student.exp() - (log_student - rest_finite + log_teacher.narrow(1, k, 1)).exp();
      g.scatter_(1, idx, student_at_ids.exp() - p.narrow(1, 0, k));
      r.grad = (g * grad_scale).to(student.scalar_type());
    }
  } else {
    const CentredTerms c = centred_terms(loss, log_student_b, log_teacher);
    r.kl = c.divergence;
    if (want_grad) {
      // q_v times its bucket's h: the rest's outside the ids, its own at them.
      auto g = log_student.exp() * c.h.narrow(1, k, 1);
      g.scatter_(1, idx, student_at_ids.exp() * c.h.narrow(1, 0, k));
      r.grad = (g * grad_scale).to(student.scalar_type());
    }
  }
  r.student_argmax = student.argmax(-1);
  r.teacher_argmax = idx.gather(1, vals.argmax(1, /*keepdim=*/true)).squeeze(1);
  return r;
}

ForwardKlResult topk_divergence(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, KdLoss loss,
                                double temperature, double grad_scale, bool want_grad) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(student) && cuda_ops::forward_kl_topk_supported(student, values, indices, rest_lse))
    return cuda_ops::topk_divergence(student, values, indices, rest_lse, loss, temperature, grad_scale, want_grad);
#endif
  return topk_divergence_reference(student, values, indices, rest_lse, loss, temperature, grad_scale, want_grad);
}

ForwardKlResult forward_kl_topk_reference(const torch::Tensor& student, const torch::Tensor& values,
                                          const torch::Tensor& indices, const torch::Tensor& rest_lse,
                                          double temperature, double grad_scale, bool want_grad) {
  return topk_divergence_reference(student, values, indices, rest_lse, KdLoss::ForwardKl, temperature, grad_scale,
                                   want_grad);
}

ForwardKlResult forward_kl_topk(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, double temperature,
                                double grad_scale, bool want_grad) {
  return topk_divergence(student, values, indices, rest_lse, KdLoss::ForwardKl, temperature, grad_scale, want_grad);
}

}  // namespace minipuzzle
