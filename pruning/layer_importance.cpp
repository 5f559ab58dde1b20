#include "minipuzzle/layer_importance.h"

#include <fmt/format.h>

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

LayerImportance::LayerImportance(const ModelConfig& config, LayerMetrics metrics)
    : cfg_(config), metrics_(metrics) {
  const auto n = static_cast<std::size_t>(cfg_.num_layers());
  mse_.assign(n, 0.0);
  kl_.assign(n, 0.0);
  loss_.assign(n, 0.0);
  bi_.assign(n, 0.0);
}

void LayerImportance::add_batch(HybridLM& model, const torch::Tensor& inputs, const torch::Tensor& targets) {
  torch::NoGradGuard no_grad;
  const int64_t n = cfg_.num_layers();
  // Full pass (observers attached), caching the input of every layer.
  std::vector<torch::Tensor> block_input(n + 1);
  block_input[0] = model->embed(inputs);
  for (int64_t i = 0; i < n; ++i) block_input[i + 1] = model->run_layers(block_input[i], i, i + 1);
  const torch::Tensor full = model->final_norm(block_input[n]);
  const uint64_t tokens = static_cast<uint64_t>(inputs.numel());

  // This batch's BI and MSE per layer stay on the device until the end (one
  // wait per batch, not one per layer and metric).
  std::vector<torch::Tensor> bi_batch, mse_batch;
  if (metrics_.bi)
    for (int64_t i = 0; i < n; ++i) {
      auto x = block_input[i].to(torch::kFloat32), y = block_input[i + 1].to(torch::kFloat32);
      bi_batch.push_back((1.0 - torch::cosine_similarity(x, y, -1, 1e-8)).sum().to(torch::kDouble));
    }

  if (metrics_.mse || metrics_.needs_logits()) {
    // Drop-one passes: the residual stream skips layer i, so the input of
    // layer i flows straight into layer i+1. Observers stay out of these.
    ObserverList saved = model->observers();
    model->observers().clear();
    const auto full32 = full.to(torch::kFloat32);
    bool have_full_loss = false;
    // The full model's log-probabilities are the same for every dropped
    // layer: keep them when they fit in 1 GiB, else recompute per chunk.
    torch::Tensor full_logprobs;
    if (metrics_.needs_logits() && full.numel() / full.size(-1) * cfg_.vocab_size * 4 <= (int64_t{1} << 30))
      full_logprobs = torch::log_softmax(model->lm_head(full.reshape({-1, full.size(-1)})), -1);
    for (int64_t i = 0; i < n; ++i) {
      auto dropped = model->final_norm(model->run_layers(block_input[i], i + 1, n));
      if (metrics_.mse) mse_batch.push_back((dropped.to(torch::kFloat32) - full32).square().sum().to(torch::kDouble));
      if (metrics_.needs_logits()) {
        const LogitComparison c = full_logprobs.defined()
                                      ? compare_logits(full_logprobs, model, dropped, targets, &scratch_)
                                      : compare_logits(model, full, model, dropped, targets, &scratch_);
        kl_[i] += c.kl_sum;
        loss_[i] += c.ce_other_sum - c.ce_reference_sum;
        if (!have_full_loss) full_loss_ += c.ce_reference_sum;
        have_full_loss = true;
      }
    }
    model->observers() = saved;
  }
  const auto add_to = [](std::vector<double>& acc, const std::vector<torch::Tensor>& batch) {
    if (batch.empty()) return;
    const auto h = torch::stack(batch).cpu();
    const auto a = h.accessor<double, 1>();
    for (std::size_t i = 0; i < batch.size(); ++i) acc[i] += a[static_cast<int64_t>(i)];
  };
  add_to(bi_, bi_batch);
  add_to(mse_, mse_batch);
  tokens_ += tokens;
  elements_ += static_cast<uint64_t>(full.numel());
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
