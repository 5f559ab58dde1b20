#include "forward_kl_cuda.h"

#include "cuda_launch.h"
#include "cuda_ops/cuda_ops.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle::cuda_ops {
namespace {

// The outputs for student logits s [rows, V], on its device.
ForwardKlResult allocate_result(const torch::Tensor& s, bool want_grad) {
  ForwardKlResult r;
  r.kl = torch::empty({s.size(0)}, s.options().dtype(torch::kFloat32));
  r.student_argmax = torch::empty({s.size(0)}, s.options().dtype(torch::kLong));
  r.teacher_argmax = torch::empty({s.size(0)}, s.options().dtype(torch::kLong));
  if (want_grad) r.grad = torch::empty(s.sizes(), s.options());
  return r;
}

kernels::Divergence kernel_divergence(KdLoss loss) {
  switch (loss) {
    case KdLoss::ReverseKl:
      return kernels::Divergence::ReverseKl;
    case KdLoss::Jsd:
      return kernels::Divergence::Jsd;
    case KdLoss::ForwardKl:
      break;
  }
  return kernels::Divergence::ForwardKl;
}

}  // namespace

bool forward_kl_supported(const torch::Tensor& student, const torch::Tensor& teacher) {
  return student.dim() == 2 && student.sizes() == teacher.sizes() && teacher.device() == student.device() &&
         cuda_kernel_dtype(student.scalar_type()) && cuda_kernel_dtype(teacher.scalar_type()) &&
         student.size(0) <= 0x7fffffff && student.size(1) > 0;
}

ForwardKlResult logit_divergence(const torch::Tensor& student, const torch::Tensor& teacher, KdLoss loss,
                                 double temperature, double grad_scale, bool want_grad) {
  const c10::cuda::CUDAGuard guard(student.device());
  // Only the vocabulary dimension must be contiguous; a row stride is fine.
  const auto s = student.stride(1) == 1 ? student : student.contiguous();
  const auto t = teacher.stride(1) == 1 ? teacher : teacher.contiguous();
  const int64_t rows = s.size(0), vocab = s.size(1);
  ForwardKlResult r = allocate_result(s, want_grad);
  kernels::ForwardKlShape shape;
  shape.rows = rows;
  shape.vocab = vocab;
  shape.student_row_stride = s.stride(0);
  shape.teacher_row_stride = t.stride(0);
  check_launch(kernels::forward_kl(shape, kernel_divergence(loss), kernel_dtype(s.scalar_type()), s.data_ptr(),
                                   kernel_dtype(t.scalar_type()), t.data_ptr(), static_cast<float>(1.0 / temperature),
                                   static_cast<float>(grad_scale), r.kl.data_ptr<float>(),
                                   want_grad ? r.grad.data_ptr() : nullptr, r.student_argmax.data_ptr<int64_t>(),
                                   r.teacher_argmax.data_ptr<int64_t>(), current_stream(s)),
               "logit divergence");
  return r;
}

bool forward_kl_topk_supported(const torch::Tensor& student, const torch::Tensor& values,
                               const torch::Tensor& indices, const torch::Tensor& rest_lse) {
  return student.dim() == 2 && values.dim() == 2 && values.sizes() == indices.sizes() &&
         values.size(0) == student.size(0) && rest_lse.numel() == student.size(0) &&
         cuda_kernel_dtype(student.scalar_type()) && values.is_floating_point() && !indices.is_floating_point() &&
         student.size(1) <= kernels::kForwardKlTopkMaxVocab && values.size(1) >= 1 &&
         values.size(1) <= student.size(1) && student.size(0) <= 0x7fffffff &&
         values.device() == student.device() && indices.device() == student.device() &&
         rest_lse.device() == student.device();
}

ForwardKlResult topk_divergence(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, KdLoss loss,
                                double temperature, double grad_scale, bool want_grad) {
  const c10::cuda::CUDAGuard guard(student.device());
  const auto s = student.stride(1) == 1 ? student : student.contiguous();
  const auto vals = values.to(torch::kFloat32).contiguous();
  const auto ids = indices.to(torch::kLong).contiguous();
  const auto rest = rest_lse.to(torch::kFloat32).contiguous();
  const int64_t rows = s.size(0), vocab = s.size(1);
  ForwardKlResult r = allocate_result(s, want_grad);
  kernels::ForwardKlTopkShape shape;
  shape.rows = rows;
  shape.vocab = vocab;
  shape.k = vals.size(1);
  shape.student_row_stride = s.stride(0);
  check_launch(kernels::forward_kl_topk(shape, kernel_divergence(loss), kernel_dtype(s.scalar_type()), s.data_ptr(),
                                        vals.data_ptr<float>(),
                                        ids.data_ptr<int64_t>(), rest.data_ptr<float>(),
                                        static_cast<float>(1.0 / temperature), static_cast<float>(grad_scale),
                                        r.kl.data_ptr<float>(), want_grad ? r.grad.data_ptr() : nullptr,
                                        r.student_argmax.data_ptr<int64_t>(), r.teacher_argmax.data_ptr<int64_t>(),
                                        current_stream(s)),
               "top-k divergence");
  return r;
}

}  // namespace minipuzzle::cuda_ops
