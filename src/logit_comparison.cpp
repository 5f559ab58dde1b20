#include "minipuzzle/logit_comparison.h"

#include <algorithm>

namespace minipuzzle {

namespace {

// Sums over chunks kept on the models' device, read once per call (on a GPU
// the host then queues every chunk without waiting for any).
class DeviceSums {
 public:
  explicit DeviceSums(const torch::Device& device)
      : sums_(torch::zeros({5}, torch::TensorOptions().dtype(torch::kDouble).device(device))) {}

  // One chunk of tokens: log-probabilities of both models [n, V], targets [n].
  void add_chunk(const torch::Tensor& lp, const torch::Tensor& lq, const torch::Tensor& tt) {
    const auto greedy = lq.argmax(-1);
    sums_ += torch::stack({(lp.exp() * (lp - lq)).sum().to(torch::kDouble),
                           -lp.gather(1, tt.unsqueeze(1)).sum().to(torch::kDouble),
                           -lq.gather(1, tt.unsqueeze(1)).sum().to(torch::kDouble),
                           greedy.eq(tt).sum().to(torch::kDouble), greedy.eq(lp.argmax(-1)).sum().to(torch::kDouble)});
    tokens_ += static_cast<uint64_t>(tt.numel());
  }

  LogitComparison result() const {
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

 private:
  torch::Tensor sums_;
  uint64_t tokens_ = 0;
};

}  // namespace

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
                               const torch::Tensor& normed_other, const torch::Tensor& targets) {
  torch::NoGradGuard no_grad;
  const int64_t vocab = reference->config().vocab_size;
  auto a = normed_reference.reshape({-1, normed_reference.size(-1)});
  auto b = normed_other.reshape({-1, normed_other.size(-1)});
  auto t = targets.reshape({-1});
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 24) / vocab);
  DeviceSums sums(b.device());
  for (int64_t start = 0; start < a.size(0); start += rows) {
    const int64_t len = std::min(rows, a.size(0) - start);
    sums.add_chunk(torch::log_softmax(reference->lm_head(a.narrow(0, start, len)), -1),
                   torch::log_softmax(other->lm_head(b.narrow(0, start, len)), -1), t.narrow(0, start, len));
  }
  return sums.result();
}

LogitComparison compare_logits(const torch::Tensor& reference_logprobs, HybridLM& other,
                               const torch::Tensor& normed_other, const torch::Tensor& targets) {
  torch::NoGradGuard no_grad;
  const int64_t vocab = reference_logprobs.size(-1);
  auto b = normed_other.reshape({-1, normed_other.size(-1)});
  auto t = targets.reshape({-1});
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 24) / vocab);
  DeviceSums sums(b.device());
  for (int64_t start = 0; start < b.size(0); start += rows) {
    const int64_t len = std::min(rows, b.size(0) - start);
    sums.add_chunk(reference_logprobs.narrow(0, start, len),
                   torch::log_softmax(other->lm_head(b.narrow(0, start, len)), -1), t.narrow(0, start, len));
  }
  return sums.result();
}

}  // namespace minipuzzle
