#include "minipuzzle/layer_importance.h"

#include <fmt/format.h>

#include <functional>
#include <sstream>

#include "minipuzzle/errors.h"
#include "minipuzzle/logit_comparison.h"

namespace minipuzzle {

LayerMetrics LayerMetrics::parse(const std::string& text) {
  LayerMetrics m{false, false, false, false};
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (part == "mse") m.mse = true;
    else if (part == "kl") m.kl = true;
    else if (part == "loss") m.loss = true;
    else if (part == "bi") m.bi = true;
    else throw InputError(fmt::format("--layer-metrics: '{}' is not one of mse, kl, loss, bi", part));
  }
  if (!(m.mse || m.kl || m.loss || m.bi)) throw InputError("--layer-metrics: name at least one of mse, kl, loss, bi");
  return m;
}

std::vector<std::string> LayerMetrics::names() const {
  std::vector<std::string> n;
  if (mse) n.push_back("mse");
  if (kl) n.push_back("kl");
  if (loss) n.push_back("loss");
  if (bi) n.push_back("bi");
  return n;
}

LayerImportance::LayerImportance(const ModelConfig& config, LayerMetrics metrics, uint64_t head_pass_bytes,
                                 uint64_t keep_full_logprobs_bytes)
    : cfg_(config), metrics_(metrics), head_pass_bytes_(head_pass_bytes),
      keep_full_logprobs_bytes_(keep_full_logprobs_bytes) {
  const auto n = static_cast<std::size_t>(cfg_.num_layers());
  mse_.assign(n, 0.0);
  kl_.assign(n, 0.0);
  loss_.assign(n, 0.0);
  bi_.assign(n, 0.0);
}

namespace {

// Logits of several row blocks in one pass over the LM head, each slice of
// the head multiplied with every pending block (so a streamed head is read
// once per pass, not once per block). Block r's logits have the bits of
// lm_head_logits(rows, W): the same product per kLmHeadSliceRows slice.
// Units complete in the order they were added.
class HeadPasses {
 public:
  using Done = std::function<void(const std::vector<torch::Tensor>& logits)>;

  HeadPasses(ForwardModel& model, uint64_t budget_bytes, torch::Tensor& pool)
      : model_(model), vocab_(model.model()->config().vocab_size), budget_(budget_bytes), pool_(pool),
        batch_units_(model.head_read_per_pass()) {}

  void add(std::vector<torch::Tensor> rows, Done done) {
    uint64_t values = 0;
    for (const auto& r : rows) values += static_cast<uint64_t>(r.size(0) * vocab_);
    if (!pending_.empty() && (!batch_units_ || (pending_values_ + values) * 4 > budget_)) flush();
    pending_.push_back({std::move(rows), std::move(done)});
    pending_values_ += values;
  }

  void flush() {
    if (pending_.empty()) return;
    const torch::Device device = pending_.front().rows.front().device();
    if (!pool_.defined() || pool_.numel() < static_cast<int64_t>(pending_values_) || pool_.device() != device)
      pool_ = torch::empty({static_cast<int64_t>(pending_values_)},
                           torch::TensorOptions().dtype(torch::kFloat32).device(device));
    std::vector<std::vector<torch::Tensor>> out(pending_.size());
    int64_t offset = 0;
    for (size_t u = 0; u < pending_.size(); ++u)
      for (const auto& r : pending_[u].rows) {
        out[u].push_back(pool_.narrow(0, offset, r.size(0) * vocab_).view({r.size(0), vocab_}));
        offset += r.size(0) * vocab_;
      }
    model_.for_each_head_slice([&](int64_t v0, const torch::Tensor& w) {
      for (size_t u = 0; u < pending_.size(); ++u)
        for (size_t r = 0; r < pending_[u].rows.size(); ++r)
          out[u][r].narrow(-1, v0, w.size(0)).copy_(torch::linear(pending_[u].rows[r], w));
    });
    auto units = std::move(pending_);
    pending_.clear();
    pending_values_ = 0;
    for (size_t u = 0; u < units.size(); ++u) units[u].done(out[u]);
  }

 private:
  struct Unit {
    std::vector<torch::Tensor> rows;
    Done done;
  };
  ForwardModel& model_;
  int64_t vocab_;
  uint64_t budget_;
  torch::Tensor& pool_;
  bool batch_units_;  // only worth it when each pass reads the head
  std::vector<Unit> pending_;
  uint64_t pending_values_ = 0;
};

// Slots of the LogitScratch.
constexpr int kWork = 0, kOther = 1, kDifference = 2, kReference = 3;

}  // namespace

void LayerImportance::add_batch(HybridLM& model, const torch::Tensor& inputs, const torch::Tensor& targets) {
  ForwardModel resident(model);
  add_group(resident, {inputs}, {targets});
}

void LayerImportance::add_group(ForwardModel& fm, const std::vector<torch::Tensor>& inputs,
                                const std::vector<torch::Tensor>& targets) {
  torch::NoGradGuard no_grad;
  HybridLM& model = fm.model();
  const int64_t n = cfg_.num_layers();
  const size_t g = inputs.size();
  const bool drops = metrics_.mse || metrics_.needs_logits();
  const ObserverList detached;

  // Layer-major: the full stream (observers attached) and, per dropped
  // layer i, the stream that skipped it. This batch's BI stays on the
  // device until the end (one wait per batch, not one per layer).
  std::vector<torch::Tensor> full = fm.embed(inputs, 0, g);
  std::vector<std::vector<torch::Tensor>> dropped(g, std::vector<torch::Tensor>(drops ? n : 0));
  std::vector<std::vector<torch::Tensor>> bi_batch(g);
  fm.for_each_block([&](int64_t j) {
    auto block = model->layer(j);
    for (size_t k = 0; k < g; ++k) {
      if (drops) {
        for (int64_t i = 0; i < j; ++i) dropped[k][i] = block->forward(dropped[k][i], detached);
        dropped[k][j] = full[k];  // skipping j: its input goes on to j+1
      }
      torch::Tensor out = block->forward(full[k], model->observers());
      if (metrics_.bi) {
        auto x = full[k].to(torch::kFloat32), y = out.to(torch::kFloat32);
        bi_batch[k].push_back((1.0 - torch::cosine_similarity(x, y, -1, 1e-8)).sum().to(torch::kDouble));
      }
      full[k] = out;
    }
  });

  const auto add_to = [](std::vector<double>& acc, const std::vector<torch::Tensor>& batch) {
    if (batch.empty()) return;
    const auto h = torch::stack(batch).cpu();
    const auto a = h.accessor<double, 1>();
    for (std::size_t i = 0; i < batch.size(); ++i) acc[i] += a[static_cast<int64_t>(i)];
  };
  for (size_t k = 0; k < g; ++k) {
    const torch::Tensor normed_full = model->final_norm(full[k]);
    full[k] = torch::Tensor();
    if (drops) {
      // Observers stay out of the dropped streams.
      ObserverList saved = model->observers();
      model->observers().clear();
      std::vector<torch::Tensor> normed_dropped(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        normed_dropped[i] = model->final_norm(dropped[k][i]);
        dropped[k][i] = torch::Tensor();
      }
      try {
        compare_dropped(fm, normed_full, normed_dropped, targets[k]);
      } catch (...) {
        model->observers() = saved;
        throw;
      }
      model->observers() = saved;
    }
    add_to(bi_, bi_batch[k]);
    tokens_ += static_cast<uint64_t>(inputs[k].numel());
    elements_ += static_cast<uint64_t>(normed_full.numel());
  }
}

void LayerImportance::compare_dropped(ForwardModel& fm, const torch::Tensor& full,
                                      std::vector<torch::Tensor>& dropped, const torch::Tensor& targets) {
  const int64_t n = cfg_.num_layers();
  const auto full32 = full.to(torch::kFloat32);
  if (metrics_.mse) {
    std::vector<torch::Tensor> mse_batch;
    for (int64_t i = 0; i < n; ++i)
      mse_batch.push_back((dropped[i].to(torch::kFloat32) - full32).square().sum().to(torch::kDouble));
    const auto h = torch::stack(mse_batch).cpu();
    const auto a = h.accessor<double, 1>();
    for (int64_t i = 0; i < n; ++i) mse_[i] += a[i];
  }
  if (!metrics_.needs_logits()) return;

  const int64_t vocab = cfg_.vocab_size, D = full.size(-1);
  const auto a = full.reshape({-1, D});
  const auto t = targets.reshape({-1});
  const int64_t N = a.size(0), rows = comparison_chunk_rows(vocab);
  const torch::Device device = a.device();
  HeadPasses passes(fm, head_pass_bytes_, head_pass_pool_);
  // The full model's log-probabilities are the same for every dropped
  // layer: kept when they fit (1 GiB by default), else recomputed per chunk.
  torch::Tensor full_logprobs;
  const bool keep_full = static_cast<uint64_t>(N * vocab) * 4 <= keep_full_logprobs_bytes_;
  if (keep_full)
    passes.add({a}, [&](const std::vector<torch::Tensor>& logits) { full_logprobs = torch::log_softmax(logits[0], -1); });
  std::vector<ComparisonSums> sums;
  sums.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    sums.emplace_back(device);
    const auto b = dropped[i].reshape({-1, D});
    for (int64_t start = 0; start < N; start += rows) {
      const int64_t len = std::min(rows, N - start);
      std::vector<torch::Tensor> unit_rows{b.narrow(0, start, len)};
      if (!keep_full) unit_rows.push_back(a.narrow(0, start, len));
      passes.add(std::move(unit_rows), [&, i, start, len](const std::vector<torch::Tensor>& logits) {
        auto lq = scratch_.view(kOther, len, vocab, device);
        at::log_softmax_out(lq, logits[0], -1);
        torch::Tensor lp;
        if (keep_full) {
          lp = full_logprobs.narrow(0, start, len);
        } else {
          lp = scratch_.view(kReference, len, vocab, device);
          at::log_softmax_out(lp, logits[1], -1);
        }
        sums[static_cast<size_t>(i)].add_chunk(lp, lq, t.narrow(0, start, len), scratch_.view(kWork, len, vocab, device),
                                               scratch_.view(kDifference, len, vocab, device));
      });
    }
  }
  passes.flush();
  for (int64_t i = 0; i < n; ++i) {
    const LogitComparison c = sums[static_cast<size_t>(i)].result();
    kl_[i] += c.kl_sum;
    loss_[i] += c.ce_other_sum - c.ce_reference_sum;
    if (i == 0) full_loss_ += c.ce_reference_sum;
  }
}

std::map<std::string, std::vector<float>> LayerImportance::result() const {
  std::map<std::string, std::vector<float>> out;
  auto scaled = [](const std::vector<double>& v, double denominator) {
    std::vector<float> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) r[i] = static_cast<float>(denominator > 0 ? v[i] / denominator : 0.0);
    return r;
  };
  if (metrics_.mse) out["mse"] = scaled(mse_, static_cast<double>(elements_));
  if (metrics_.kl) out["kl"] = scaled(kl_, static_cast<double>(tokens_));
  if (metrics_.loss) out["loss"] = scaled(loss_, static_cast<double>(tokens_));
  if (metrics_.bi) out["bi"] = scaled(bi_, static_cast<double>(tokens_));
  return out;
}

double LayerImportance::full_model_loss() const { return tokens_ > 0 ? full_loss_ / tokens_ : 0.0; }

}  // namespace minipuzzle
