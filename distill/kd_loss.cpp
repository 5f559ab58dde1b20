#include "minipuzzle/kd_loss.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "minipuzzle/errors.h"
#include "minipuzzle/forward_kl.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle {

KdLoss parse_kd_loss(const std::string& name) {
  if (name == "forward_kl" || name == "fkl") return KdLoss::ForwardKl;
  if (name == "reverse_kl" || name == "rkl") return KdLoss::ReverseKl;
  if (name == "jsd") return KdLoss::Jsd;
  throw InputError("unknown distillation loss '" + name + "' (expected forward_kl|fkl, reverse_kl|rkl or jsd)");
}

std::string kd_loss_name(KdLoss loss) {
  switch (loss) {
    case KdLoss::ForwardKl:
      return "forward_kl";
    case KdLoss::ReverseKl:
      return "reverse_kl";
    case KdLoss::Jsd:
      return "jsd";
  }
  return "?";
}

KdSums KdResult::host_sums() const {
  KdSums h;
  if (!sums.defined()) return h;
  const auto c = sums.to(torch::kCPU, torch::kDouble).contiguous();
  const auto a = c.accessor<double, 1>();
  h.kd_sum = a[0];
  h.ce_sum = a[1];
  h.correct = static_cast<int64_t>(a[2]);
  h.agree = static_cast<int64_t>(a[3]);
  return h;
}

namespace {

using torch::Tensor;

// x * y where x > 0, else 0 (so 0 * -inf terms of empty buckets vanish).
Tensor where_positive(const Tensor& x, const Tensor& y) { return torch::where(x > 0, x * y, 0.0); }

// D(p, q) over buckets b (last dim), from log p and log q (fp32).
// value: element-wise terms that sum to D.
// h (when asked, reverse KL and JSD): h_b = dD/dq_b - sum_b' q_b' dD/dq_b',
// so that the gradient w.r.t. the student's tempered logits s_j is
//   dD/ds_j = q_j * h_b(j)      (from dq_b/ds_j = q_j [j in b] - q_j q_b):
//   reverse KL: h = log q - log p - KL(q||p);
//   JSD:        h = 0.5 (log q - log m - KL(q||m)).
// Forward KL has h = 1 - p_b / q_b; callers use the stable forms q_j - p_j
// (one entry per bucket) and q_j - p_b * (q_j / q_b) (the rest bucket).
// Writing the gradient centred like this (rather than as
// q_j dD/dq_b - q_j * sum(...)) makes it exactly 0 when p == q.
struct BucketTerms {
  Tensor value, h;
};

BucketTerms divergence_terms(KdLoss loss, const Tensor& logp, const Tensor& logq, bool want_h) {
  BucketTerms r;
  switch (loss) {
    case KdLoss::ForwardKl:
      r.value = where_positive(logp.exp(), logp - logq);
      return r;
    case KdLoss::ReverseKl: {
      auto q = logq.exp();
      auto a = torch::where(q > 0, logq - logp, torch::zeros_like(q));
      r.value = q * a;
      if (want_h) r.h = a - r.value.sum(-1, true);
      return r;
    }
    case KdLoss::Jsd: {
      auto q = logq.exp();
      auto logm = torch::logaddexp(logp, logq) - std::log(2.0);
      auto a = torch::where(q > 0, logq - logm, torch::zeros_like(q));
      auto q_part = q * a;
      r.value = 0.5 * (where_positive(logp.exp(), logp - logm) + q_part);
      if (want_h) r.h = 0.5 * (a - q_part.sum(-1, true));
      return r;
    }
  }
  return r;
}

// What a teacher source gives for one chunk of tokens.
struct ChunkDivergence {
  Tensor per_token;       // [len] D at temperature T
  Tensor grad_s;          // [len, V] dD/ds (s = student logits / T); undefined unless asked
  Tensor teacher_argmax;  // [len] int64
};
// (start, len, student log_softmax(z / T) [len, V], want_grad)
using DivergenceFn = std::function<ChunkDivergence(int64_t, int64_t, const Tensor&, bool)>;

ChunkDivergence full_vocab_divergence(KdLoss loss, const Tensor& logp, const Tensor& logq, bool want_grad) {
  ChunkDivergence d;
  BucketTerms bt = divergence_terms(loss, logp, logq, want_grad);
  d.per_token = bt.value.sum(-1);
  if (want_grad) d.grad_s = loss == KdLoss::ForwardKl ? logq.exp() - logp.exp() : logq.exp() * bt.h;
  d.teacher_argmax = logp.argmax(-1);
  return d;
}

// Passes the gradients computed chunk by chunk in the forward on to the
// student's normed hidden states and lm_head weight.
struct PrecomputedGrads {
  Tensor loss, grad_normed, grad_weight;
};

class ChunkedKdFunction : public torch::autograd::Function<ChunkedKdFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& normed, const Tensor& weight,
                        const PrecomputedGrads* g) {
    (void)normed;
    (void)weight;
    ctx->saved_data["has_normed"] = g->grad_normed.defined();
    ctx->saved_data["has_weight"] = g->grad_weight.defined();
    if (g->grad_normed.defined()) ctx->saved_data["grad_normed"] = g->grad_normed;
    if (g->grad_weight.defined()) ctx->saved_data["grad_weight"] = g->grad_weight;
    return g->loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto& go = grad_outputs[0];
    Tensor gn, gw;
    if (ctx->saved_data["has_normed"].toBool()) {
      auto t = ctx->saved_data["grad_normed"].toTensor();
      gn = t * go.to(t.scalar_type());
    }
    if (ctx->saved_data["has_weight"].toBool()) {
      auto t = ctx->saved_data["grad_weight"].toTensor();
      gw = t * go.to(t.scalar_type());
    }
    return {gn, gw, Tensor()};
  }
};

void check_options(const KdOptions& opts) {
  if (!(opts.temperature > 0) || !std::isfinite(opts.temperature))
    throw InputError("distillation temperature must be > 0, got " + std::to_string(opts.temperature));
  if (!(opts.ce_weight >= 0) || !std::isfinite(opts.ce_weight))
    throw InputError("distillation ce_weight must be >= 0, got " + std::to_string(opts.ce_weight));
  if (opts.chunk_tokens < 0)
    throw InputError("distillation chunk_tokens must be >= 0 (0 = auto), got " + std::to_string(opts.chunk_tokens));
}

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// (start, len, student logits z [len, V], grad_scale, want_grad) -> the
// divergence at the temperature with grad_scale * dD/d(z/T): logit_divergence
// or forward_kl_topk (forward_kl.h) for this chunk's teacher.
using FusedKlFn = std::function<ForwardKlResult(int64_t, int64_t, const Tensor&, double, bool)>;

// The chunk loop shared by every teacher source. Sources also pass
// `fused_kl` (empty when they have none for opts.loss): on CUDA it then runs
// our fused kernels instead of materialising both log-softmaxes.
KdResult run_chunked(HybridLM& student, const Tensor& student_normed, const Tensor& targets, const KdOptions& opts,
                     const DivergenceFn& divergence, const FusedKlFn& fused_kl) {
  check_options(opts);
  const Tensor& weight = student->lm_head_weights->weight;
  const int64_t vocab = weight.size(0), hidden = weight.size(1);
  if (student_normed.dim() < 1 || student_normed.size(-1) != hidden)
    throw InputError("student hidden states " + shape_str(student_normed) + " do not end in the student's hidden size " +
                     std::to_string(hidden));
  const Tensor x = student_normed.detach().reshape({-1, hidden});
  const int64_t n = x.size(0);
  Tensor t;
  if (targets.defined()) {
    if (targets.numel() != n)
      throw InputError("distillation targets " + shape_str(targets) + " do not match " + std::to_string(n) + " tokens");
    t = targets.reshape({-1}).to(x.device(), torch::kLong);
  }
  if (opts.ce_weight > 0 && !t.defined()) throw InputError("distillation ce_weight > 0 needs targets");

  const bool grad_mode = torch::GradMode::is_enabled();
  const bool need_x = grad_mode && student_normed.requires_grad();
  const bool need_w = grad_mode && weight.requires_grad();
  const bool want_grad = need_x || need_w;
  const int64_t rows = opts.chunk_tokens > 0 ? opts.chunk_tokens : std::max<int64_t>(1, (int64_t{1} << 24) / vocab);
  const double temp = opts.temperature;
  const double inv_n = n > 0 ? 1.0 / static_cast<double>(n) : 0.0;

  torch::NoGradGuard no_grad;
  const Tensor w = weight.detach();
  Tensor grad_x = need_x ? torch::empty_like(x) : Tensor();
  Tensor grad_w = need_w ? torch::zeros({vocab, hidden}, w.options().dtype(torch::kFloat32)) : Tensor();
  // Sums stay on the device (KdResult::sums): no host sync per chunk or per call.
  auto acc_opts = torch::TensorOptions().dtype(torch::kDouble).device(x.device());
  Tensor kd_acc = torch::zeros({}, acc_opts), ce_acc = torch::zeros({}, acc_opts);
  Tensor correct_acc = torch::zeros({}, acc_opts.dtype(torch::kLong));
  Tensor agree_acc = torch::zeros({}, acc_opts.dtype(torch::kLong));

  const bool fused = fused_kl && use_cuda_kernels(x);
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const Tensor xc = x.narrow(0, start, len);
    const Tensor z = student->lm_head(xc);  // [len, V] fp32
    // d loss / d z = T^2 * (1/T) * dD/ds / n (+ ce_weight * (softmax(z) - onehot) / n).
    Tensor g, logq, greedy;
    if (fused) {
      ForwardKlResult f = fused_kl(start, len, z, temp * inv_n, want_grad);
      kd_acc += f.kl.sum().to(torch::kDouble);
      greedy = f.student_argmax;
      agree_acc += greedy.eq(f.teacher_argmax).sum();
      g = f.grad;
    } else {
      logq = torch::log_softmax(temp == 1.0 ? z : z / temp, -1);
      ChunkDivergence d = divergence(start, len, logq, want_grad);
      kd_acc += d.per_token.sum().to(torch::kDouble);
      greedy = z.argmax(-1);
      agree_acc += greedy.eq(d.teacher_argmax).sum();
      if (want_grad) g = d.grad_s.mul_(temp * inv_n);
    }
    Tensor logq1, tc;
    if (t.defined()) {
      tc = t.narrow(0, start, len).unsqueeze(1);
      logq1 = temp == 1.0 && logq.defined() ? logq : torch::log_softmax(z, -1);
      ce_acc -= logq1.gather(1, tc).sum().to(torch::kDouble);
      correct_acc += greedy.eq(tc.squeeze(1)).sum();
    }
    if (!want_grad) continue;
    if (opts.ce_weight > 0) {
      g.add_(logq1.exp(), opts.ce_weight * inv_n);
      g.scatter_add_(1, tc, torch::full({len, 1}, -opts.ce_weight * inv_n, g.options()));
    }
    const Tensor gz = g.to(w.scalar_type());
    if (need_x) grad_x.narrow(0, start, len).copy_(gz.mm(w));  // z = x W^T
    if (need_w) {
      if (grad_w.scalar_type() == gz.scalar_type())
        grad_w.addmm_(gz.t(), xc);
      else
        grad_w.add_(gz.t().mm(xc.to(gz.scalar_type())).to(torch::kFloat32));
    }
  }

  Tensor loss = ((kd_acc * (temp * temp) + ce_acc * opts.ce_weight) * inv_n).to(torch::kFloat32);
  KdResult r;
  r.tokens = n;
  r.sums = torch::stack({kd_acc, ce_acc, correct_acc.to(torch::kDouble), agree_acc.to(torch::kDouble)});
  if (!want_grad) {
    r.loss = loss;
    return r;
  }
  PrecomputedGrads pg;
  pg.loss = loss;
  if (need_x) pg.grad_normed = grad_x.view(student_normed.sizes()).to(student_normed.scalar_type());
  if (need_w) pg.grad_weight = grad_w.to(weight.scalar_type());
  {
    torch::AutoGradMode enable(true);
    r.loss = ChunkedKdFunction::apply(student_normed, weight, &pg);
  }
  return r;
}

void check_vocab(int64_t student_vocab, int64_t teacher_vocab, const std::string& what) {
  if (student_vocab != teacher_vocab)
    throw InputError("teacher " + what + " has vocabulary " + std::to_string(teacher_vocab) + " but the student has " +
                     std::to_string(student_vocab) + ": distillation needs the same tokenizer");
}

int64_t leading_numel(const Tensor& t) {
  int64_t n = 1;
  for (int64_t i = 0; i + 1 < t.dim(); ++i) n *= t.size(i);
  return n;
}

int64_t student_tokens(const Tensor& student_normed) {
  return student_normed.dim() >= 1 ? leading_numel(student_normed) : 0;
}

}  // namespace

KdResult kd_loss_online(HybridLM& student, const torch::Tensor& student_normed, HybridLM& teacher,
                        const torch::Tensor& teacher_normed, const torch::Tensor& targets, const KdOptions& opts) {
  const int64_t vocab = student->lm_head_weights->weight.size(0);
  check_vocab(vocab, teacher->lm_head_weights->weight.size(0), "model");
  const int64_t t_hidden = teacher->lm_head_weights->weight.size(1);
  if (teacher_normed.dim() < 1 || teacher_normed.size(-1) != t_hidden ||
      leading_numel(teacher_normed) != student_tokens(student_normed))
    throw InputError("teacher hidden states " + shape_str(teacher_normed) + " do not match the student's " +
                     shape_str(student_normed) + " (teacher hidden size " + std::to_string(t_hidden) + ")");
  const Tensor tx = teacher_normed.detach().reshape({-1, t_hidden});
  const double temp = opts.temperature;
  const KdLoss loss = opts.loss;
  return run_chunked(student, student_normed, targets, opts,
                     [&](int64_t start, int64_t len, const Tensor& logq, bool want_grad) {
                       Tensor tz = teacher->lm_head(tx.narrow(0, start, len));
                       if (temp != 1.0) tz = tz / temp;
                       return full_vocab_divergence(loss, torch::log_softmax(tz, -1), logq, want_grad);
                     },
                     [&](int64_t start, int64_t len, const Tensor& z, double scale, bool want_grad) {
                       return logit_divergence(z, teacher->lm_head(tx.narrow(0, start, len)), loss, temp, scale,
                                               want_grad);
                     });
}

KdResult kd_loss_logits(HybridLM& student, const torch::Tensor& student_normed, const torch::Tensor& teacher_logits,
                        const torch::Tensor& targets, const KdOptions& opts) {
  const int64_t vocab = student->lm_head_weights->weight.size(0);
  if (teacher_logits.dim() < 1) throw InputError("teacher logits must have a vocabulary dimension");
  check_vocab(vocab, teacher_logits.size(-1), "logits");
  if (leading_numel(teacher_logits) != student_tokens(student_normed))
    throw InputError("teacher logits " + shape_str(teacher_logits) + " do not match the student's hidden states " +
                     shape_str(student_normed));
  const Tensor tl = teacher_logits.detach().reshape({-1, vocab});
  const double temp = opts.temperature;
  const KdLoss loss = opts.loss;
  return run_chunked(student, student_normed, targets, opts,
                     [&](int64_t start, int64_t len, const Tensor& logq, bool want_grad) {
                       Tensor tz = tl.narrow(0, start, len).to(logq.device(), torch::kFloat32);
                       if (temp != 1.0) tz = tz / temp;
                       return full_vocab_divergence(loss, torch::log_softmax(tz, -1), logq, want_grad);
                     },
                     [&](int64_t start, int64_t len, const Tensor& z, double scale, bool want_grad) {
                       return logit_divergence(z, tl.narrow(0, start, len).to(z.device()), loss, temp, scale,
                                               want_grad);
                     });
}

KdResult kd_loss_topk(HybridLM& student, const torch::Tensor& student_normed, const torch::Tensor& topk_values,
                      const torch::Tensor& topk_indices, const torch::Tensor& teacher_rest_lse,
                      const torch::Tensor& targets, const KdOptions& opts) {
  const int64_t vocab = student->lm_head_weights->weight.size(0);
  const int64_t n = student_tokens(student_normed);
  if (topk_values.dim() < 1 || topk_values.sizes() != topk_indices.sizes())
    throw InputError("teacher top-k values " + shape_str(topk_values) + " and indices " + shape_str(topk_indices) +
                     " must have the same shape");
  const int64_t k = topk_values.size(-1);
  if (k < 1 || k > vocab)
    throw InputError("teacher top-k: k = " + std::to_string(k) + " must be in [1, " + std::to_string(vocab) + "]");
  if (leading_numel(topk_values) != n || teacher_rest_lse.numel() != n)
    throw InputError("teacher top-k values " + shape_str(topk_values) + " / rest " + shape_str(teacher_rest_lse) +
                     " do not match the student's hidden states " + shape_str(student_normed));
  const Tensor tv = topk_values.detach().reshape({-1, k});
  const Tensor ti = topk_indices.detach().reshape({-1, k});
  const Tensor tr = teacher_rest_lse.detach().reshape({-1, 1});
  const KdLoss loss = opts.loss;
  return run_chunked(
      student, student_normed, targets, opts, [&](int64_t start, int64_t len, const Tensor& logq, bool want_grad) {
        const auto dev = logq.device();
        const Tensor idx = ti.narrow(0, start, len).to(dev, torch::kLong);
        const Tensor vals = tv.narrow(0, start, len).to(dev, torch::kFloat32);
        const Tensor rest = tr.narrow(0, start, len).to(dev, torch::kFloat32);
        // Teacher buckets [len, k+1]: the k values and the rest, normalised.
        const Tensor logp_b = torch::log_softmax(torch::cat({vals, rest}, 1), 1);
        // Student buckets: its log-probabilities at the indices, and the
        // log-sum-exp of all the others (-inf when there are none).
        const Tensor logq_k = logq.gather(1, idx);
        const Tensor logq_r =
            torch::logsumexp(logq.scatter(1, idx, -std::numeric_limits<float>::infinity()), 1, /*keepdim=*/true);
        const Tensor logq_b = torch::cat({logq_k, logq_r}, 1);
        BucketTerms bt = divergence_terms(loss, logp_b, logq_b, want_grad);
        ChunkDivergence d;
        d.per_token = bt.value.sum(-1);
        d.teacher_argmax = idx.gather(1, vals.argmax(1, /*keepdim=*/true)).squeeze(1);
        if (!want_grad) return d;
        const Tensor q = logq.exp();
        const Tensor q_k = logq_k.exp();
        Tensor g, g_k;
        if (loss == KdLoss::ForwardKl) {
          // Rest entries: q_j - p_rest * (q_j / q_rest), the ratio as
          // exp(log q_j - log q_rest) (stable when the rest is tiny; when
          // it is empty, k = V, every entry is overwritten below).
          const Tensor logq_r_safe = torch::where(torch::isinf(logq_r), torch::zeros_like(logq_r), logq_r);
          g = q - (logq - logq_r_safe + logp_b.narrow(1, k, 1)).exp();
          g_k = q_k - logp_b.narrow(1, 0, k).exp();
        } else {
          g = q * bt.h.narrow(1, k, 1);
          g_k = q_k * bt.h.narrow(1, 0, k);
        }
        g.scatter_(1, idx, g_k);  // the top-k entries are buckets of their own
        d.grad_s = g;
        return d;
      },
      [&](int64_t start, int64_t len, const Tensor& z, double scale, bool want_grad) {
        const auto dev = z.device();
        return topk_divergence(z, tv.narrow(0, start, len).to(dev), ti.narrow(0, start, len).to(dev),
                               tr.narrow(0, start, len).reshape({-1}).to(dev), loss, opts.temperature, scale,
                               want_grad);
      });
}

TeacherTopK teacher_topk(const torch::Tensor& teacher_logits, int64_t k, double temperature) {
  if (teacher_logits.dim() < 1) throw InputError("teacher logits must have a vocabulary dimension");
  const int64_t vocab = teacher_logits.size(-1);
  if (k < 1 || k > vocab)
    throw InputError("teacher top-k: k = " + std::to_string(k) + " must be in [1, " + std::to_string(vocab) + "]");
  if (!(temperature > 0) || !std::isfinite(temperature))
    throw InputError("distillation temperature must be > 0, got " + std::to_string(temperature));
  torch::NoGradGuard no_grad;
  Tensor z = teacher_logits.detach().to(torch::kFloat32);
  if (temperature != 1.0) z = z / temperature;
  auto [values, indices] = z.topk(k, -1, /*largest=*/true, /*sorted=*/true);
  TeacherTopK r;
  r.rest_lse = torch::logsumexp(z.scatter(-1, indices, -std::numeric_limits<float>::infinity()), -1);
  r.values = values;
  r.indices = indices;
  return r;
}

}  // namespace minipuzzle
