#include "minipuzzle/evaluate.h"

#include <cmath>

#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/token_windows.h"

namespace minipuzzle {

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
  if (opt.warmup_batches > 0) {
    std::vector<uint64_t> first(starts.begin(), starts.begin() + std::min<size_t>(starts.size(), opt.batch));
    auto rows = to_device_async(gather_windows(data, first, opt.seq_len, vocab), model->device());
    for (int64_t i = 0; i < opt.warmup_batches; ++i)
      fm.forward_logits({rows.narrow(1, 0, opt.seq_len)}, [](size_t, const torch::Tensor&) {});
    wait_for_device(model->device());
  }
  Progress progress("eval", starts.size() * opt.seq_len);
  // A group of batches at a time: one batch when resident, the plan's
  // layer-major group when the weights stream.
  const size_t group = static_cast<size_t>(opt.batch) * static_cast<size_t>(std::max<int64_t>(fm.plan().group_batches, 1));
  for (size_t g = 0; g < starts.size(); g += group) {
    std::vector<torch::Tensor> inputs, targets;
    for (size_t i = g; i < std::min(starts.size(), g + group); i += opt.batch) {
      std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + opt.batch));
      auto rows = to_device_async(gather_windows(data, part, opt.seq_len, vocab), model->device());
      inputs.push_back(rows.narrow(1, 0, opt.seq_len));
      targets.push_back(rows.narrow(1, 1, opt.seq_len));
    }
    fm.forward_logits(inputs, [&](size_t k, const torch::Tensor& out) {
      auto logits = out.reshape({-1, vocab});
      auto t = targets[k].reshape({-1});
      correct += logits.argmax(-1).eq(t).sum();
      // cross_entropy is nll_loss(log_softmax(logits)); the log-probabilities
      // are written over the logits (this batch's own tensor, read no more)
      // instead of a second [tokens x vocab] fp32 buffer: the same bits, one
      // batch of logits less at the peak (0.07x of the 0.93B checkpoint).
      at::log_softmax_out(logits, logits, -1);
      loss_sum += at::nll_loss(logits, t, {}, at::Reduction::Sum, -100).to(torch::kDouble);
      count += t.numel();
      progress.update(count);  // windows queued (on a GPU, not necessarily run yet)
    });
  }
  EvalResult r;
  r.tokens = count;
  r.windows = starts.size();
  r.loss = loss_sum.item<double>() / count;
  r.perplexity = std::exp(r.loss);
  r.accuracy = static_cast<double>(correct.item<int64_t>()) / count;
  r.seconds = progress.elapsed_seconds();
  return r;
}

}  // namespace minipuzzle
