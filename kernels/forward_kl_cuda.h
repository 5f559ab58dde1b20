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

// Top-k teacher (an offline cache; kd_loss_topk's convention): the teacher is
// k buckets and one "rest" bucket, the student aggregated the same way (its
// probabilities at the k indices; the rest as the log-sum-exp of its other
// logits, exact when the rest is tiny).
//   values [rows, k] fp32: teacher logits already divided by T, contiguous
//   indices [rows, k] int64: distinct vocabulary ids per row (others skipped)
//   rest_lse [rows] fp32: log-sum-exp of the other tempered teacher logits
//   (-inf when k = vocab)
// kl over the k + 1 buckets; grad (student dtype, [rows, vocab], not in
// place) = grad_scale * dKL/ds'; teacher_argmax: the id of the largest value.
// The top-k positions are marked in a shared-memory bitmap: vocab is limited.
constexpr int64_t kForwardKlTopkMaxVocab = (48 * 1024 - 2048) * 8;  // bitmap + static shared <= 48 KiB
struct ForwardKlTopkShape {
  int64_t rows = 0, vocab = 0, k = 0, student_row_stride = 0;
};
cudaError_t forward_kl_topk(const ForwardKlTopkShape& shape, DType student_dtype, const void* student,
                            const float* values, const int64_t* indices, const float* rest_lse, float inv_temperature,
                            float grad_scale, float* kl, void* grad, int64_t* student_argmax,
                            int64_t* teacher_argmax, cudaStream_t stream);

}  // namespace minipuzzle::kernels
