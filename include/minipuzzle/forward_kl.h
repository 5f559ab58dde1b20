// Forward KL(teacher || student) (or reverse KL, or JSD) between two rows of
// logits at a temperature, with the gradient w.r.t. the student's logits in
// the same call: the fused op behind logit distillation (kd_loss.cpp uses it
// on CUDA).
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// Distillation divergences, p the teacher, q the student, m = (p + q) / 2:
// forward KL(p || q) (Minitron's choice), reverse KL(q || p),
// JSD = 0.5 KL(p || m) + 0.5 KL(q || m).
enum class KdLoss { ForwardKl, ReverseKl, Jsd };

struct ForwardKlResult {
  torch::Tensor kl;              // [rows] fp32: the divergence (forward KL: sum_v p log(p / q)), p = softmax(t/T),
                                 // q = softmax(s/T); no T^2
  torch::Tensor grad;            // [rows, V] student dtype: grad_scale * dD/d(s/T) (forward KL: q - p); undefined
                                 // unless asked
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

// The same for any of the divergences (forward_kl = loss ForwardKl).
ForwardKlResult logit_divergence(const torch::Tensor& student, const torch::Tensor& teacher, KdLoss loss,
                                 double temperature, double grad_scale, bool want_grad);
ForwardKlResult logit_divergence_reference(const torch::Tensor& student, const torch::Tensor& teacher, KdLoss loss,
                                           double temperature, double grad_scale, bool want_grad);

// The same against a top-k teacher (kd_loss_topk's convention): values
// [rows, k] teacher logits already divided by T, indices [rows, k] distinct
// vocabulary ids, rest_lse [rows] the log-sum-exp of the other tempered
// teacher logits (-inf when k = V). The divergence is over k + 1 buckets
// (the student's rest as the log-sum-exp of its other logits); the gradient
// is w.r.t. the student's tempered logits, times grad_scale; teacher_argmax
// is the id of the largest value.
ForwardKlResult forward_kl_topk(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, double temperature,
                                double grad_scale, bool want_grad);
ForwardKlResult forward_kl_topk_reference(const torch::Tensor& student, const torch::Tensor& values,
                                          const torch::Tensor& indices, const torch::Tensor& rest_lse,
                                          double temperature, double grad_scale, bool want_grad);

// The same for any of the divergences over the k + 1 buckets (reverse KL and
// JSD: dD/ds'_v = q_v h_b(v) with h from the bucket divergence, as in
// logit_divergence).
ForwardKlResult topk_divergence(const torch::Tensor& student, const torch::Tensor& values,
                                const torch::Tensor& indices, const torch::Tensor& rest_lse, KdLoss loss,
                                double temperature, double grad_scale, bool want_grad);
ForwardKlResult topk_divergence_reference(const torch::Tensor& student, const torch::Tensor& values,
                                          const torch::Tensor& indices, const torch::Tensor& rest_lse, KdLoss loss,
                                          double temperature, double grad_scale, bool want_grad);

}  // namespace minipuzzle
