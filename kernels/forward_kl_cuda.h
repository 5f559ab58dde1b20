// Fused logit distillation loss: forward KL(teacher || student) at a
// temperature over a large vocabulary, one block per row, two passes over
// the logits (online softmax statistics, then the gradient), no fp32 copies.
// Definition: src/forward_kl.cpp (forward_kl_reference).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernel_dtype.h"

namespace minipuzzle::kernels {

struct ForwardKlShape {
  int64_t rows = 0, vocab = 0;
  int64_t student_row_stride = 0, teacher_row_stride = 0;  // elements; the vocabulary dimension is contiguous
};

// With p = softmax(teacher / T), q = softmax(student / T):
//   kl[r]   = sum_v p log(p / q)                       (fp32, no T^2 factor)
//   grad    = grad_scale * (q - p)  in student_dtype, [rows, vocab] contiguous;
//             may be the student logits themselves (in place, when their row
//             stride is vocab); null: none
//   student_argmax[r], teacher_argmax[r]: first index of the row maximum
// inv_temperature = 1 / T.
cudaError_t forward_kl(const ForwardKlShape& shape, DType student_dtype, const void* student, DType teacher_dtype,
                       const void* teacher, float inv_temperature, float grad_scale, float* kl, void* grad,
                       int64_t* student_argmax, int64_t* teacher_argmax, cudaStream_t stream);

}  // namespace minipuzzle::kernels
