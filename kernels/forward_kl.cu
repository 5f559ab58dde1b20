// Launchers: argument checks, grid, dispatch on dtype (kernels in forward_kl_kernels.cuh).
#include "forward_kl_cuda.h"
#include "forward_kl_kernels.cuh"

namespace minipuzzle::kernels {

using namespace detail;

cudaError_t forward_kl(const ForwardKlShape& shape, DType student_dtype, const void* student, DType teacher_dtype,
                       const void* teacher, float inv_temperature, float grad_scale, float* kl, void* grad,
                       int64_t* student_argmax, int64_t* teacher_argmax, cudaStream_t stream) {
  if (shape.rows == 0) return cudaSuccess;
  if (shape.vocab <= 0 || shape.rows > 0x7fffffff) return cudaErrorInvalidValue;
  dispatch_dtype(student_dtype, [&](auto s_tag) {
    using TS = decltype(s_tag);
    dispatch_dtype(teacher_dtype, [&](auto t_tag) {
      using TT = decltype(t_tag);
      forward_kl_kernel<TS, TT><<<static_cast<unsigned>(shape.rows), kKlThreads, 0, stream>>>(
          static_cast<const TS*>(student), static_cast<const TT*>(teacher), shape.vocab, shape.student_row_stride,
          shape.teacher_row_stride, inv_temperature, grad_scale, kl, static_cast<TS*>(grad), student_argmax,
          teacher_argmax);
    });
  });
  return cudaGetLastError();
}

}  // namespace minipuzzle::kernels
