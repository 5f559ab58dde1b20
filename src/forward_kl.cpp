#include "minipuzzle/forward_kl.h"

#include "kernels_build.h"
#include "minipuzzle/kernel_dispatch.h"
#if MINIPUZZLE_HAVE_CUDA_KERNELS
#include "cuda_ops/cuda_ops.h"
#endif

namespace minipuzzle {

ForwardKlResult forward_kl_reference(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                                     double grad_scale, bool want_grad) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(), "forward_kl: student ", student.sizes(),
              " and teacher ", teacher.sizes(), " must both be [rows, vocab]");
  torch::NoGradGuard no_grad;
  const double inv_t = 1.0 / temperature;
  const auto logq = torch::log_softmax(student.to(torch::kFloat32) * inv_t, -1);
  const auto logp = torch::log_softmax(teacher.to(torch::kFloat32) * inv_t, -1);
  const auto p = logp.exp();
  ForwardKlResult r;
  r.kl = torch::where(p > 0, p * (logp - logq), torch::zeros_like(p)).sum(-1);
  if (want_grad) r.grad = ((logq.exp() - p) * grad_scale).to(student.scalar_type());
  r.student_argmax = student.argmax(-1);
  r.teacher_argmax = teacher.argmax(-1);
  return r;
}

ForwardKlResult forward_kl(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                           double grad_scale, bool want_grad) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(student) && cuda_ops::forward_kl_supported(student, teacher))
    return cuda_ops::forward_kl(student, teacher, temperature, grad_scale, want_grad);
#endif
  return forward_kl_reference(student, teacher, temperature, grad_scale, want_grad);
}

}  // namespace minipuzzle
