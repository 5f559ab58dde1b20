#include "minipuzzle/logit_comparison.h"

#include <algorithm>

#include "minipuzzle/streamed_model.h"

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

HeadPassComparison::HeadPassComparison(ForwardModel* reference, ForwardModel& other, uint64_t budget_bytes)
    : reference_(reference), other_(other), vocab_(other.model()->config().vocab_size), budget_(budget_bytes),
      gather_(other.head_read_per_pass() || (reference && reference->head_read_per_pass())) {}

void HeadPassComparison::add(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& t,
                             ComparisonSums* sums) {
  const uint64_t values = 2 * static_cast<uint64_t>(a.size(0) * vocab_);
  if (!pending_.empty() && (!gather_ || (pending_values_ + values) * 4 > budget_)) flush();
  pending_.push_back({a, b, t, sums});
  pending_values_ += values;
}

void HeadPassComparison::flush() {
  if (pending_.empty()) return;
  torch::NoGradGuard no_grad;
  const torch::Device device = pending_.front().b.device();
  if (!pool_.defined() || pool_.numel() < static_cast<int64_t>(pending_values_) || pool_.device() != device)
    pool_ = torch::empty({static_cast<int64_t>(pending_values_)},
                         torch::TensorOptions().dtype(torch::kFloat32).device(device));
  std::vector<torch::Tensor> p(pending_.size()), q(pending_.size());
  int64_t offset = 0;
  for (size_t u = 0; u < pending_.size(); ++u) {
    const int64_t n = pending_[u].a.size(0) * vocab_;
    p[u] = pool_.narrow(0, offset, n).view({-1, vocab_});
    q[u] = pool_.narrow(0, offset + n, n).view({-1, vocab_});
    offset += 2 * n;
  }
  // Each slice's product as lm_head_into computes it.
  auto logits_of = [&](std::vector<torch::Tensor>& out, int64_t v0, const torch::Tensor& w, bool reference) {
    for (size_t u = 0; u < pending_.size(); ++u)
      out[u].narrow(-1, v0, w.size(0)).copy_(torch::linear(reference ? pending_[u].a : pending_[u].b, w));
  };
  if (reference_) {
    reference_->for_each_head_slice([&](int64_t v0, const torch::Tensor& w) { logits_of(p, v0, w, true); });
    // One head at a time: the reference's gives its room back to other's.
    reference_->release_head();
    other_.for_each_head_slice([&](int64_t v0, const torch::Tensor& w) { logits_of(q, v0, w, false); });
  } else {
    other_.for_each_head_slice([&](int64_t v0, const torch::Tensor& w, const torch::Tensor& source) {
      logits_of(p, v0, source, true);
      logits_of(q, v0, w, false);
    });
  }
  for (size_t u = 0; u < pending_.size(); ++u) {
    const int64_t len = pending_[u].a.size(0);
    auto lp = scratch_.view(kReference, len, vocab_, device);
    at::log_softmax_out(lp, p[u], -1);
    auto lq = scratch_.view(kOther, len, vocab_, device);
    at::log_softmax_out(lq, q[u], -1);
    pending_[u].sums->add_chunk(lp, lq, pending_[u].t, scratch_.view(kLogits, len, vocab_, device),
                                scratch_.view(kDifference, len, vocab_, device));
  }
  pending_.clear();
  pending_values_ = 0;
}

LogitComparison compare_with_head_passes(ForwardModel* reference, const std::vector<torch::Tensor>& reference_hidden,
                                         ForwardModel& other, const std::vector<torch::Tensor>& inputs,
                                         const std::vector<torch::Tensor>& targets, uint64_t budget_bytes) {
  torch::NoGradGuard no_grad;
  const size_t batches = inputs.size();
  const size_t group = static_cast<size_t>(std::max<int64_t>(other.plan().streamed ? other.plan().group_batches : 1, 1));
  const int64_t rows = comparison_chunk_rows(other.model()->config().vocab_size);
  HeadPassComparison passes(reference, other, budget_bytes);
  std::vector<ComparisonSums> sums;
  sums.reserve(batches);
  for (size_t b = 0; b < batches; ++b) sums.emplace_back(inputs[b].device());
  for (size_t first = 0; first < batches; first += group) {
    const size_t n = std::min(group, batches - first);
    std::vector<torch::Tensor> hidden(n);
    other.forward_hidden({inputs.begin() + first, inputs.begin() + first + n},
                         [&](size_t i, const torch::Tensor& h) { hidden[i] = h; });
    for (size_t i = 0; i < n; ++i) {
      const auto& ref = reference_hidden[first + i];
      const auto a = ref.reshape({-1, ref.size(-1)});
      const auto h = hidden[i].reshape({-1, hidden[i].size(-1)});
      const auto t = targets[first + i].reshape({-1});
      for (int64_t start = 0; start < a.size(0); start += rows) {
        const int64_t len = std::min(rows, a.size(0) - start);
        passes.add(a.narrow(0, start, len), h.narrow(0, start, len), t.narrow(0, start, len), &sums[first + i]);
      }
    }
    passes.flush();
  }
  LogitComparison sum;
  for (const auto& s : sums) sum += s.result();
  return sum;
}

uint64_t comparison_head_pass_bytes(const ModelConfig& c, torch::ScalarType dtype) {
  const uint64_t head = static_cast<uint64_t>(c.vocab_size * c.hidden_size) * c10::elementSize(dtype);
  return std::min<uint64_t>(head / 4, uint64_t{1} << 30);
}

uint64_t comparison_working_bytes(const ModelConfig& c, torch::ScalarType dtype, int64_t rows) {
  const uint64_t chunk =
      std::min<uint64_t>(comparison_chunk_rows(c.vocab_size), static_cast<uint64_t>(std::max<int64_t>(rows, 1))) *
      static_cast<uint64_t>(c.vocab_size) * 4;
  return 4 * chunk + std::max(comparison_head_pass_bytes(c, dtype), 2 * chunk);
}

}  // namespace minipuzzle
