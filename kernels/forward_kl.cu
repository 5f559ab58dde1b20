// Launchers: argument checks, grid, dispatch on dtype (kernels in forward_kl_kernels.cuh).
#include "forward_kl_cuda.h"
#include "forward_kl_kernels.cuh"
#include "forward_kl_topk_kernels.cuh"

namespace minipuzzle::kernels {

using namespace detail;

cudaError_t forward_kl(const ForwardKlShape& shape, Divergence divergence, DType student_dtype, const void* student,
                       DType teacher_dtype, const void* teacher, float inv_temperature, float grad_scale, float* kl,
                       void* grad, int64_t* student_argmax, int64_t* teacher_argmax, cudaStream_t stream) {
  if (shape.rows == 0) return cudaSuccess;
  if (shape.vocab <= 0 || shape.rows > 0x7fffffff) return cudaErrorInvalidValue;
  dispatch_dtype(student_dtype, [&](auto s_tag) {
    using TS = decltype(s_tag);
    dispatch_dtype(teacher_dtype, [&](auto t_tag) {
      using TT = decltype(t_tag);
      forward_kl_kernel<TS, TT><<<static_cast<unsigned>(shape.rows), kKlThreads, 0, stream>>>(
          static_cast<const TS*>(student), static_cast<const TT*>(teacher), shape.vocab, shape.student_row_stride,
          shape.teacher_row_stride, inv_temperature, grad_scale, kl, static_cast<TS*>(grad), student_argmax,
          teacher_argmax, divergence);
    });
  });
  return cudaGetLastError();
}

cudaError_t forward_kl_topk(const ForwardKlTopkShape& shape, Divergence divergence, DType student_dtype,
                            const void* student,
                            const float* values, const int64_t* indices, const float* rest_lse, float inv_temperature,
                            float grad_scale, float* kl, void* grad, int64_t* student_argmax,
                            int64_t* teacher_argmax, cudaStream_t stream) {
  if (shape.rows == 0) return cudaSuccess;
  if (shape.vocab <= 0 || shape.vocab > kForwardKlTopkMaxVocab || shape.k < 1 || shape.k > shape.vocab ||
      shape.rows > 0x7fffffff)
    return cudaErrorInvalidValue;
  const size_t bitmap = topk_bitmap_bytes(shape.vocab);
  dispatch_dtype(student_dtype, [&](auto tag) {
    using TS = decltype(tag);
    forward_kl_topk_kernel<TS><<<static_cast<unsigned>(shape.rows), kKlTopkThreads, bitmap, stream>>>(
        static_cast<const TS*>(student), values, indices, rest_lse, shape.vocab, shape.k, shape.student_row_stride,
        inv_temperature, grad_scale, kl, static_cast<TS*>(grad), student_argmax, teacher_argmax, divergence);
  });
  return cudaGetLastError();
}

}  // namespace minipuzzle::kernels
