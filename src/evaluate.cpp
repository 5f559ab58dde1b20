#include "minipuzzle/evaluate.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/token_windows.h"

namespace minipuzzle {

namespace {

// Rows of one batch whose cross-entropy and top-1 are taken a vocabulary
// slice of the LM head at a time, with a running log-sum-exp (the online
// softmax of flash attention): a batch's [tokens x vocab] fp32 logits, 0.07x
// of the 0.93B checkpoint at 256 tokens, never exist; one slice's
// [rows x kLmHeadSliceRows] does. Each slice's logits are lm_head_logits'
// own bits and every run (resident or streamed) visits the same slices with
// the same rows in the same order, so the sums agree bit for bit between
// runs. Against log_softmax over whole rows they differ by fp32 rounding
// (the exponentials are summed per slice and rescaled).
class SlicedTokenLoss {
 public:
  SlicedTokenLoss(torch::Tensor rows, torch::Tensor targets) : rows_(std::move(rows)), targets_(std::move(targets)) {}

  void add_slice(int64_t v0, const torch::Tensor& w) {
    torch::Tensor logits = lm_head_logits(rows_, w);  // [rows, n] fp32, ours to overwrite
    const int64_t n = w.size(0);
    const torch::Tensor index = logits.argmax(-1);
    const torch::Tensor top = logits.gather(1, index.unsqueeze(1)).squeeze(1);
    const torch::Tensor local = targets_ - v0;
    const torch::Tensor here = local.ge(0).logical_and(local.lt(n));
    const torch::Tensor picked = logits.gather(1, local.clamp(0, n - 1).unsqueeze(1)).squeeze(1);
    if (!max_.defined()) {
      target_ = torch::where(here, picked, torch::zeros_like(picked));
      best_ = index;
      max_ = top;
      sum_ = logits.sub_(top.unsqueeze(1)).exp_().sum(-1);
      return;
    }
    target_ = torch::where(here, picked, target_);
    // Strictly greater: of equal maxima the first token wins, as argmax over
    // the whole row picks it.
    const torch::Tensor better = top.gt(max_);
    best_ = torch::where(better, index + v0, best_);
    const torch::Tensor m = torch::where(better, top, max_);
    sum_ = sum_.mul_((max_ - m).exp_()).add_(logits.sub_(m.unsqueeze(1)).exp_().sum(-1));
    max_ = m;
  }

  // Sum over the rows of -log p(target) (double) and of top-1 hits.
  torch::Tensor loss_sum() const {
    return (max_.to(torch::kDouble) + sum_.to(torch::kDouble).log() - target_.to(torch::kDouble)).sum();
  }
  torch::Tensor correct() const { return best_.eq(targets_).sum(); }

 private:
  torch::Tensor rows_, targets_;
  torch::Tensor max_, sum_, target_, best_;
};

}  // namespace

uint64_t eval_logit_bytes(int64_t vocab, int64_t tokens) {
  const int64_t rows = std::min<int64_t>(std::max<int64_t>(tokens, 1), kEvalChunkRows);
  // The slice's fp32 logits and one temporary of their size (the product in
  // the compute dtype, the exponentials' sum).
  return 2 * static_cast<uint64_t>(rows * std::min(vocab, kLmHeadSliceRows)) * 4;
}

EvalResult evaluate(HybridLM& model, const IndexedDataset& data, const EvalOptions& opt) {
  ForwardModel resident(model);
  return evaluate(resident, data, opt);
}

EvalResult evaluate(ForwardModel& fm, const IndexedDataset& data, const EvalOptions& opt) {
  HybridLM& model = fm.model();
  if (opt.seq_len <= 0) throw InputError("--seq-len must be positive");
  if (opt.batch <= 0) throw InputError("--batch must be positive");
  if (opt.warmup_batches < 0) throw InputError("--warmup-batches must be >= 0");
  if (data.total_tokens() < static_cast<uint64_t>(opt.seq_len) + 1)
    throw InputError("dataset " + data.prefix() + " has " + std::to_string(data.total_tokens()) +
                     " tokens, fewer than one window of --seq-len " + std::to_string(opt.seq_len) + " + 1");
  // max_tokens / seq_len = 0 would mean "every window" to sequential_windows.
  if (opt.max_tokens > 0 && opt.max_tokens < static_cast<uint64_t>(opt.seq_len))
    throw InputError("--max-tokens " + std::to_string(opt.max_tokens) + " is smaller than one window of --seq-len " +
                     std::to_string(opt.seq_len));
  const auto starts = sequential_windows(data.total_tokens(), opt.seq_len, opt.max_tokens / opt.seq_len);
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t vocab = model->config().vocab_size;
  // Summed on the model's device and read once at the end: on a GPU the
  // host queues window after window without waiting for any.
  const auto acc = torch::TensorOptions().dtype(torch::kDouble).device(model->device());
  torch::Tensor loss_sum = torch::zeros({}, acc), correct = torch::zeros({}, acc.dtype(torch::kLong));
  uint64_t count = 0;
  std::optional<Progress> progress;  // started after the warm-up: its clock times the scored passes

  // One group's final states, then one pass over the head for all of them
  // (a streamed head is read once per group). The loss adds up per chunk of
  // at most kEvalChunkRows tokens, in batch order: deterministic.
  const auto score = [&](const std::vector<torch::Tensor>& inputs, const std::vector<torch::Tensor>& targets,
                         bool keep) {
    std::vector<SlicedTokenLoss> chunks;
    fm.forward_hidden(inputs, [&](size_t k, const torch::Tensor& normed) {
      const auto rows = normed.reshape({-1, normed.size(-1)});
      const auto t = targets[k].reshape({-1});
      for (int64_t start = 0; start < rows.size(0); start += kEvalChunkRows) {
        const int64_t len = std::min(kEvalChunkRows, rows.size(0) - start);
        chunks.emplace_back(rows.narrow(0, start, len), t.narrow(0, start, len));
      }
    });
    fm.for_each_head_slice([&](int64_t v0, const torch::Tensor& w) {
      for (auto& c : chunks) c.add_slice(v0, w);
    });
    if (!keep) return;
    for (const auto& c : chunks) {
      loss_sum += c.loss_sum();
      correct += c.correct();
    }
    for (const auto& t : targets) count += static_cast<uint64_t>(t.numel());
    progress->update(count);  // windows queued (on a GPU, not necessarily run yet)
  };

  const auto batch_of = [&](size_t first, std::vector<torch::Tensor>& inputs, std::vector<torch::Tensor>& targets) {
    std::vector<uint64_t> part(starts.begin() + first, starts.begin() + std::min(starts.size(), first + opt.batch));
    auto rows = to_device_async(gather_windows(data, part, opt.seq_len, vocab), model->device());
    inputs.push_back(rows.narrow(1, 0, opt.seq_len));
    targets.push_back(rows.narrow(1, 1, opt.seq_len));
  };
  if (opt.warmup_batches > 0) {
    std::vector<torch::Tensor> inputs, targets;
    batch_of(0, inputs, targets);
    for (int64_t i = 0; i < opt.warmup_batches; ++i) score(inputs, targets, false);
    wait_for_device(model->device());
  }
  progress.emplace("eval", starts.size() * opt.seq_len);
  // A group of batches at a time: one batch when resident, the plan's
  // layer-major group when the weights stream.
  const size_t group = static_cast<size_t>(opt.batch) * static_cast<size_t>(std::max<int64_t>(fm.plan().group_batches, 1));
  for (size_t g = 0; g < starts.size(); g += group) {
    std::vector<torch::Tensor> inputs, targets;
    for (size_t i = g; i < std::min(starts.size(), g + group); i += opt.batch) batch_of(i, inputs, targets);
    score(inputs, targets, true);
  }
  EvalResult r;
  r.tokens = count;
  r.windows = starts.size();
  r.loss = loss_sum.item<double>() / count;
  r.perplexity = std::exp(r.loss);
  r.accuracy = static_cast<double>(correct.item<int64_t>()) / count;
  r.seconds = progress->elapsed_seconds();
  return r;
}

}  // namespace minipuzzle
