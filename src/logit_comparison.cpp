#include "minipuzzle/logit_comparison.h"

#include <algorithm>

namespace minipuzzle {

namespace {

// Slots of LogitScratch.
constexpr int kLogits = 0, kOther = 1, kDifference = 2, kReference = 3;

// model->lm_head(normed) written into `out`: the same slices as
// lm_head_logits, so the same bits, without a fresh vocabulary-wide tensor.
void lm_head_into(HybridLM& model, const torch::Tensor& normed, torch::Tensor& out) {
  const auto& weight = model->lm_head_weights->weight;
  const int64_t V = weight.size(0);
  for (int64_t v0 = 0; v0 < V; v0 += kLmHeadSliceRows) {
    const int64_t n = std::min(kLmHeadSliceRows, V - v0);
    out.narrow(-1, v0, n).copy_(torch::linear(normed, weight.narrow(0, v0, n)));
  }
}

// log_softmax of one model's logits for rows `normed`, in scratch slot `slot`
// (the logits pass through slot kLogits).
torch::Tensor logprobs_into(HybridLM& model, const torch::Tensor& normed, LogitScratch& scratch, int slot) {
  const int64_t rows = normed.size(0), vocab = model->config().vocab_size;
  auto logits = scratch.view(kLogits, rows, vocab, normed.device());
  lm_head_into(model, normed, logits);
  auto out = scratch.view(slot, rows, vocab, normed.device());
  at::log_softmax_out(out, logits, -1);
  return out;
}

}  // namespace

int64_t comparison_chunk_rows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 24) / vocab); }

ComparisonSums::ComparisonSums(const torch::Device& device)
    : sums_(torch::zeros({5}, torch::TensorOptions().dtype(torch::kDouble).device(device))) {}

void ComparisonSums::add_chunk(const torch::Tensor& lp, const torch::Tensor& lq, const torch::Tensor& tt,
                               torch::Tensor work, torch::Tensor difference) {
  const auto greedy = lq.argmax(-1);
  // The KL terms are exp(lp) * (lp - lq) as one expression would compute
  // them, so the sums keep their bits.
  at::exp_out(work, lp);
  at::sub_out(difference, lp, lq);
  work.mul_(difference);
  sums_ += torch::stack({work.sum().to(torch::kDouble), -lp.gather(1, tt.unsqueeze(1)).sum().to(torch::kDouble),
                         -lq.gather(1, tt.unsqueeze(1)).sum().to(torch::kDouble),
                         greedy.eq(tt).sum().to(torch::kDouble), greedy.eq(lp.argmax(-1)).sum().to(torch::kDouble)});
  tokens_ += static_cast<uint64_t>(tt.numel());
}

LogitComparison ComparisonSums::result() const {
  const auto h = sums_.cpu();
  const auto a = h.accessor<double, 1>();
  LogitComparison r;
  r.kl_sum = a[0];
  r.ce_reference_sum = a[1];
  r.ce_other_sum = a[2];
  r.other_correct = static_cast<uint64_t>(a[3]);
  r.agree = static_cast<uint64_t>(a[4]);
  r.tokens = tokens_;
  return r;
}

torch::Tensor LogitScratch::view(int slot, int64_t rows, int64_t vocab, const torch::Device& device) {
  torch::Tensor& b = buffers_[slot];
  if (!b.defined() || b.size(0) < rows || b.size(1) != vocab || b.device() != device)
    b = torch::empty({rows, vocab}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  return b.narrow(0, 0, rows);
}

LogitComparison& LogitComparison::operator+=(const LogitComparison& o) {
  kl_sum += o.kl_sum;
  ce_reference_sum += o.ce_reference_sum;
  ce_other_sum += o.ce_other_sum;
  other_correct += o.other_correct;
  agree += o.agree;
  tokens += o.tokens;
  return *this;
}

LogitComparison compare_logits(HybridLM& reference, const torch::Tensor& normed_reference, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets,
                               LogitScratch* scratch) {
  torch::NoGradGuard no_grad;
  LogitScratch local;
  LogitScratch& s = scratch ? *scratch : local;
  const int64_t vocab = reference->config().vocab_size;
  auto a = normed_reference.reshape({-1, normed_reference.size(-1)});
  auto b = normed_other.reshape({-1, normed_other.size(-1)});
  auto t = targets.reshape({-1});
  const int64_t rows = comparison_chunk_rows(vocab);
  ComparisonSums sums(b.device());
  for (int64_t start = 0; start < a.size(0); start += rows) {
    const int64_t len = std::min(rows, a.size(0) - start);
    const auto lp = logprobs_into(reference, a.narrow(0, start, len), s, kReference);
    const auto lq = logprobs_into(other, b.narrow(0, start, len), s, kOther);
    sums.add_chunk(lp, lq, t.narrow(0, start, len), s.view(kLogits, len, vocab, b.device()),
                   s.view(kDifference, len, vocab, b.device()));
  }
  return sums.result();
}

LogitComparison compare_logits(const torch::Tensor& reference_logprobs, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets,
                               LogitScratch* scratch) {
  torch::NoGradGuard no_grad;
  LogitScratch local;
  LogitScratch& s = scratch ? *scratch : local;
  const int64_t vocab = reference_logprobs.size(-1);
  auto b = normed_other.reshape({-1, normed_other.size(-1)});
  auto t = targets.reshape({-1});
  const int64_t rows = comparison_chunk_rows(vocab);
  ComparisonSums sums(b.device());
  for (int64_t start = 0; start < b.size(0); start += rows) {
    const int64_t len = std::min(rows, b.size(0) - start);
    const auto lq = logprobs_into(other, b.narrow(0, start, len), s, kOther);
    sums.add_chunk(reference_logprobs.narrow(0, start, len), lq, t.narrow(0, start, len),
                   s.view(kLogits, len, vocab, b.device()), s.view(kDifference, len, vocab, b.device()));
  }
  return sums.result();
}

}  // namespace minipuzzle
