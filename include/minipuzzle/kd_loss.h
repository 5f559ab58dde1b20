// Knowledge-distillation losses between a student's and a teacher's
// next-token distributions (logit distillation, Minitron/Nemotron-H style).
//
// Memory: the student's and the teacher's [tokens x vocab] fp32 logits are
// never materialised at once. The loss works on chunks of tokens from the
// final normed hidden states: per chunk it computes both models' logits,
// the divergence, and right away the gradient w.r.t. the student's logits,
// which it pushes back through the student's lm_head matmul. Only the
// results of that are kept for backward: d loss / d student_normed
// ([tokens x D], the normed dtype) and d loss / d lm_head.weight ([V x D],
// accumulated in fp32 over chunks, cast to the weight dtype at the end).
// backward() then just hands them on (scaled by the incoming gradient).
// Under torch::NoGradGuard, or when neither input requires grad, no
// gradient is computed at all (evaluation costs one pass).
//
// Conventions:
// - Temperature T: the divergence D is taken between softmax(teacher/T)
//   and softmax(student/T) and multiplied by T^2 (Hinton et al.), so the
//   gradient magnitude does not depend on T:
//     d loss / d student_logits = T^2 * (1/T) * dD/ds = T * dD/ds.
//   For forward KL that is T * (softmax(s/T) - softmax(t/T)).
// - The cross-entropy term (ce_weight > 0) is the student's ordinary LM
//   loss at temperature 1 on `targets`, not scaled by T^2.
// - Normalisation: the loss is a MEAN over the tokens of this call,
//     loss = (T^2 * kd_sum + ce_weight * ce_sum) / tokens.
//   With gradient accumulation over M micro-batches of equal token count,
//   backpropagate loss / M for each (or, with unequal counts, weight each
//   micro-batch's loss by tokens_i / sum(tokens)) to get the mean over the
//   whole batch.
// - Divergences: forward KL = KL(teacher || student) (Minitron's choice);
//   reverse KL = KL(student || teacher); JSD = 0.5 KL(p||m) + 0.5 KL(q||m)
//   with m = (p + q) / 2, p = teacher, q = student.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "minipuzzle/forward_kl.h"  // KdLoss
#include "minipuzzle/hybrid_lm.h"

namespace minipuzzle {

// "forward_kl" | "reverse_kl" | "jsd"; InputError otherwise.
KdLoss parse_kd_loss(const std::string& name);
// The inverse of parse_kd_loss.
std::string kd_loss_name(KdLoss loss);

struct KdOptions {
  KdLoss loss = KdLoss::ForwardKl;
  double temperature = 1.0;  // > 0
  double ce_weight = 0.0;    // >= 0; 0 = pure logit distillation (Minitron: LM loss off)
  int64_t chunk_tokens = 0;  // tokens per chunk; 0 = auto: ~2^24 logits per chunk (128 tokens at vocab 131072)
};

// KdResult's sums on the host.
struct KdSums {
  double kd_sum = 0;    // sum over tokens of D(teacher, student) at temperature T, nats, without the T^2 factor
  double ce_sum = 0;    // sum over tokens of the student's cross-entropy at T = 1 (0 without targets)
  int64_t correct = 0;  // student argmax == target (0 without targets)
  int64_t agree = 0;    // student argmax == teacher argmax
};

struct KdResult {
  // Scalar fp32: (T^2 * kd_sum + ce_weight * ce_sum) / tokens. Differentiable
  // w.r.t. the student's normed hidden states and its lm_head.weight when
  // grad mode is on and either requires grad; a plain tensor otherwise.
  torch::Tensor loss;
  // [4] fp64 on the loss's device: kd_sum, ce_sum, correct, agree (KdSums).
  // They stay there so that a training step can add up its micro-batches
  // and read them once: reading them waits for the device.
  torch::Tensor sums;
  int64_t tokens = 0;  // tokens in this call
  // `sums` copied to the host (a synchronisation on an accelerator).
  KdSums host_sums() const;
};

// Online distillation: the teacher's logits are computed chunk by chunk from
// its final normed hidden states (teacher->final_norm output, [..., Dt],
// same leading shape as student_normed), without grad.
//   student_normed: [..., D] student->final_norm output (usually requires grad).
//   targets: [...] int64 next tokens, or an undefined tensor (then no CE,
//   ce_sum = correct = 0; ce_weight must be 0).
// InputError on mismatched vocab sizes, shapes or bad options.
KdResult kd_loss_online(HybridLM& student, const torch::Tensor& student_normed, HybridLM& teacher,
                        const torch::Tensor& teacher_normed, const torch::Tensor& targets, const KdOptions& opts = {});

// The same with precomputed teacher logits [..., V] (any float dtype, not
// divided by T; read chunk by chunk and converted to fp32 per chunk).
KdResult kd_loss_logits(HybridLM& student, const torch::Tensor& student_normed, const torch::Tensor& teacher_logits,
                        const torch::Tensor& targets, const KdOptions& opts = {});

// Top-k teacher (e.g. from an offline cache): the teacher distribution is
// k explicit buckets plus one "rest" bucket holding the remaining mass; the
// student's distribution is aggregated the same way (its probabilities at
// the k indices, and the rest bucket = 1 - their sum, computed as the
// log-sum-exp of the student's other logits so it stays exact when the rest
// is tiny). opts.loss is applied over these k + 1 buckets (forward KL is the
// intended use; reverse KL and JSD work the same way).
//   topk_values:  [..., k] teacher logits ALREADY DIVIDED BY opts.temperature
//   topk_indices: [..., k] int64 vocabulary ids, distinct within a row
//   teacher_rest_lse: [...] log-sum-exp of the other (tempered) teacher
//                 logits; -inf when k = vocab.
// teacher_topk(logits, k, T) produces exactly these; a cache written at one
// temperature serves only runs at that temperature. With k = vocab this
// equals kd_loss_logits. Tokens, targets and the result as above; `agree`
// uses the teacher's argmax among the k values.
KdResult kd_loss_topk(HybridLM& student, const torch::Tensor& student_normed, const torch::Tensor& topk_values,
                      const torch::Tensor& topk_indices, const torch::Tensor& teacher_rest_lse,
                      const torch::Tensor& targets, const KdOptions& opts = {});

struct TeacherTopK {
  torch::Tensor values;    // [..., k] fp32, logits / temperature, descending
  torch::Tensor indices;   // [..., k] int64
  torch::Tensor rest_lse;  // [...] fp32, logsumexp of the other logits / temperature (-inf when k = vocab)
};

// Top-k of a chunk of teacher logits [..., V] (no grad), for kd_loss_topk or
// an offline logit cache. 1 <= k <= V.
TeacherTopK teacher_topk(const torch::Tensor& teacher_logits, int64_t k, double temperature = 1.0);

}  // namespace minipuzzle
