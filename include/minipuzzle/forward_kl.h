// Forward KL(teacher || student) between two rows of logits at a
// temperature, with the gradient w.r.t. the student's logits in the same
// call: the fused op behind logit distillation (kd_loss.cpp uses it on CUDA).
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

struct ForwardKlResult {
  torch::Tensor kl;              // [rows] fp32: sum_v p log(p / q), p = softmax(t/T), q = softmax(s/T); no T^2
  torch::Tensor grad;            // [rows, V] student dtype: grad_scale * (q - p); undefined unless asked
  torch::Tensor student_argmax;  // [rows] int64
  torch::Tensor teacher_argmax;  // [rows] int64
};

// student, teacher: [rows, V] logits (fp32, fp16 or bf16; not divided by T),
// on one device. Runs our CUDA kernel for CUDA tensors (kernel_dispatch.h),
// the reference otherwise. No autograd: the gradient is returned.
ForwardKlResult forward_kl(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                           double grad_scale, bool want_grad);

// The definition, in LibTorch ops (fp32 log-softmax of both).
ForwardKlResult forward_kl_reference(const torch::Tensor& student, const torch::Tensor& teacher, double temperature,
                                     double grad_scale, bool want_grad);

}  // namespace minipuzzle
