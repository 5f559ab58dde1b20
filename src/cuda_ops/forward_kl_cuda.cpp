#include "forward_kl_cuda.h"

#include "cuda_launch.h"
#include "cuda_ops/cuda_ops.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle::cuda_ops {

bool forward_kl_supported(const torch::Tensor& student, const torch::Tensor& teacher) {
  return student.dim() == 2 && student.sizes() == teacher.sizes() && teacher.device() == student.device() &&
         cuda_kernel_dtype(student.scalar_type()) && cuda_kernel_dtype(teacher.scalar_type()) &&
         student.size(0) <= 0x7fffffff && student.size(1) > 0;
}

ForwardKlResult forward_kl(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                           double grad_scale, bool want_grad) {
  const c10::cuda::CUDAGuard guard(student.device());
  // Only the vocabulary dimension must be contiguous; a row stride is fine.
  const auto s = student.stride(1) == 1 ? student : student.contiguous();
  const auto t = teacher.stride(1) == 1 ? teacher : teacher.contiguous();
  const int64_t rows = s.size(0), vocab = s.size(1);
  ForwardKlResult r;
  r.kl = torch::empty({rows}, s.options().dtype(torch::kFloat32));
  r.student_argmax = torch::empty({rows}, s.options().dtype(torch::kLong));
  r.teacher_argmax = torch::empty({rows}, s.options().dtype(torch::kLong));
  if (want_grad) r.grad = torch::empty({rows, vocab}, s.options());
  kernels::ForwardKlShape shape;
  shape.rows = rows;
  shape.vocab = vocab;
  shape.student_row_stride = s.stride(0);
  shape.teacher_row_stride = t.stride(0);
  check_launch(kernels::forward_kl(shape, kernel_dtype(s.scalar_type()), s.data_ptr(), kernel_dtype(t.scalar_type()),
                                   t.data_ptr(), static_cast<float>(1.0 / temperature), static_cast<float>(grad_scale),
                                   r.kl.data_ptr<float>(), want_grad ? r.grad.data_ptr() : nullptr,
                                   r.student_argmax.data_ptr<int64_t>(), r.teacher_argmax.data_ptr<int64_t>(),
                                   current_stream(s)),
               "forward_kl");
  return r;
}

}  // namespace minipuzzle::cuda_ops
