// Fused logit distillation loss: forward KL(teacher || student) (or reverse
// KL, or JSD) at a temperature over a large vocabulary, one block per row,
// passes over the logits (online softmax statistics, then the gradient; JSD
// one more for its sums), no fp32 copies.
// Definition: src/forward_kl.cpp (logit_divergence_reference).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernel_dtype.h"

namespace minipuzzle::kernels {

struct ForwardKlShape {
  int64_t rows = 0, vocab = 0;
  int64_t student_row_stride = 0, teacher_row_stride = 0;  // elements; the vocabulary dimension is contiguous
};

// kd_loss.h's divergences, p the teacher, q the student, m = (p + q) / 2.
enum class Divergence { ForwardKl, ReverseKl, Jsd };

// With p = softmax(teacher / T), q = softmax(student / T):
//   kl[r]   = the divergence (fp32, no T^2 factor):
//             forward KL(p || q) = sum_v p log(p / q); reverse KL(q || p);
//             JSD = 0.5 KL(p || m) + 0.5 KL(q || m)
//   grad    = grad_scale * dD/ds' (s' = student / T) in student_dtype, [rows,
//             vocab] contiguous: q - p for forward KL; q (log q - log p - D)
//             for reverse KL; q (a - sum_u q_u a_u) / 2 with a = log q - log m
//             for JSD. May be the student logits themselves (in place, when
//             their row stride is vocab: each entry is read before it is
//             written, by the same thread); null: none
//   student_argmax[r], teacher_argmax[r]: first index of the row maximum
// inv_temperature = 1 / T.
cudaError_t forward_kl(const ForwardKlShape& shape, Divergence divergence, DType student_dtype, const void* student,
                       DType teacher_dtype, const void* teacher, float inv_temperature, float grad_scale, float* kl,
                       void* grad, int64_t* student_argmax, int64_t* teacher_argmax, cudaStream_t stream);

// Top-k teacher (an offline cache; kd_loss_topk's convention): the teacher is
// k buckets and one "rest" bucket, the student aggregated the same way (its
// probabilities at the k indices; the rest as the log-sum-exp of its other
// logits, exact when the rest is tiny).
//   values [rows, k] fp32: teacher logits already divided by T, contiguous
//   indices [rows, k] int64: distinct vocabulary ids per row (others skipped)
//   rest_lse [rows] fp32: log-sum-exp of the other tempered teacher logits
//   (-inf when k = vocab)
// `divergence` over the k + 1 buckets into kl; grad (student dtype, [rows,
// vocab], not in place) = grad_scale * dD/ds'; teacher_argmax: the id of the
// largest value.
// The top-k positions are marked in a shared-memory bitmap: vocab is limited.
constexpr int64_t kForwardKlTopkMaxVocab = (48 * 1024 - 2048) * 8;  // bitmap + static shared <= 48 KiB
struct ForwardKlTopkShape {
  int64_t rows = 0, vocab = 0, k = 0, student_row_stride = 0;
};
cudaError_t forward_kl_topk(const ForwardKlTopkShape& shape, Divergence divergence, DType student_dtype,
                            const void* student,
                            const float* values, const int64_t* indices, const float* rest_lse, float inv_temperature,
                            float grad_scale, float* kl, void* grad, int64_t* student_argmax,
                            int64_t* teacher_argmax, cudaStream_t stream);

}  // namespace minipuzzle::kernels
