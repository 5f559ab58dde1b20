#include "minipuzzle/forward_kl.h"

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
  const auto q = logq.exp();
  const auto zero = torch::zeros_like(q);
  // dD/ds'_v = q_v (dD/dq_v - sum_u q_u dD/dq_u); 0 log 0 terms vanish.
  torch::Tensor a, h;
  ForwardKlResult r;
  if (loss == KdLoss::ReverseKl) {
    a = torch::where(q > 0, logq - logp, zero);  // dD/dq - 1
    r.kl = (q * a).sum(-1);
    h = a - r.kl.unsqueeze(1);
  } else {
    const auto logm = torch::logaddexp(logp, logq) - std::log(2.0);
    const auto p = logp.exp();
    a = torch::where(q > 0, logq - logm, zero);  // 2 dD/dq - 1
    r.kl = 0.5 * (torch::where(p > 0, p * (logp - logm), zero) + q * a).sum(-1);
    h = 0.5 * (a - (q * a).sum(-1, true));
  }
  if (want_grad) r.grad = (q * h * grad_scale).to(student.scalar_type());
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

ForwardKlResult forward_kl_topk_reference(const torch::Tensor& student, const torch::Tensor& values,
                                          const torch::Tensor& indices, const torch::Tensor& rest_lse,
                                          double temperature, double grad_scale, bool want_grad) {
  TORCH_CHECK(student.dim() == 2 && values.dim() == 2 && values.sizes() == indices.sizes() &&
                  values.size(0) == student.size(0) && rest_lse.numel() == student.size(0),
              "forward_kl_topk: student [rows, V], values and indices [rows, k], rest [rows]");
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
  const auto p = log_teacher.exp();
  ForwardKlResult r;
  r.kl = torch::where(p > 0, p * (log_teacher - log_student_b), torch::zeros_like(p)).sum(-1);
  if (want_grad) {
    // Outside the ids: q_v (1 - p_rest / q_rest); at them: q_v - p_i.
    const auto rest_finite = torch::where(torch::isinf(student_rest), torch::zeros_like(student_rest), student_rest);
    auto g = log_student.exp() - (log_student - rest_finite + log_teacher.narrow(1, k, 1)).exp();
    g.scatter_(1, idx, student_at_ids.exp() - p.narrow(1, 0, k));
    r.grad = (g * grad_scale).to(student.scalar_type());
  }
  r.student_argmax = student.argmax(-1);
  r.teacher_argmax = idx.gather(1, vals.argmax(1, /*keepdim=*/true)).squeeze(1);
  return r;
}

ForwardKlResult forward_kl_topk(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, double temperature,
                                double grad_scale, bool want_grad) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(student) && cuda_ops::forward_kl_topk_supported(student, values, indices, rest_lse))
    return cuda_ops::forward_kl_topk(student, values, indices, rest_lse, temperature, grad_scale, want_grad);
#endif
  return forward_kl_topk_reference(student, values, indices, rest_lse, temperature, grad_scale, want_grad);
}

}  // namespace minipuzzle
