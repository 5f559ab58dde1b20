#include "minipuzzle/score_importance.h"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/token_batches.h"
#include "minipuzzle/token_windows.h"

namespace minipuzzle {

std::vector<uint64_t> calibration_windows(const IndexedDataset& data, const ScoreOptions& opt) {
  if (opt.samples <= 0) throw InputError("--samples must be positive");
  if (opt.seq_len <= 0) throw InputError("--seq-len must be positive");
  if (opt.batch <= 0) throw InputError("--batch must be positive");
  const uint64_t need = static_cast<uint64_t>(opt.samples) * static_cast<uint64_t>(opt.seq_len) + 1;
  if (data.total_tokens() < need)
    throw InputError(fmt::format("dataset {} has {} tokens, fewer than --samples {} x --seq-len {} (+1) = {}",
                                 data.prefix(), data.total_tokens(), opt.samples, opt.seq_len, need));
  return random_windows(data.total_tokens(), opt.seq_len, static_cast<uint64_t>(opt.samples), opt.seed);
}

ImportanceScores score_importance(HybridLM& model, const IndexedDataset& data, const ScoreOptions& opt,
                                  const std::function<void(const ScoreProgress&)>& on_batch) {
  const auto starts = calibration_windows(data, opt);
  const ModelConfig& cfg = model->config();
  torch::NoGradGuard no_grad;
  model->eval();

  WidthStatistics width(model, opt.aggregation);
  LayerImportance layers(cfg, opt.layer_metrics);
  model->observers().add(&width);
  const auto t0 = std::chrono::steady_clock::now();
  ScoreProgress p;
  p.batches = (opt.samples + opt.batch - 1) / opt.batch;
  try {
    for (std::size_t i = 0; i < starts.size(); i += opt.batch) {
      std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + opt.batch));
      auto rows = to_device_async(gather_windows(data, part, opt.seq_len, cfg.vocab_size), model->device());
      layers.add_batch(model, rows.narrow(1, 0, opt.seq_len), rows.narrow(1, 1, opt.seq_len));
      ++p.batch;
      p.tokens += part.size() * static_cast<uint64_t>(opt.seq_len);
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (on_batch) on_batch(p);
    }
  } catch (...) {
    model->observers().remove(&width);
    throw;
  }
  model->observers().remove(&width);

  ImportanceScores s;
  s.layer = layers.result();
  width.fill(s);
  nlohmann::json prov = {{"data", data.prefix()},
                         {"dataset_tokens", data.total_tokens()},
                         {"samples", opt.samples},
                         {"seq_len", opt.seq_len},
                         {"batch", opt.batch},
                         {"seed", opt.seed},
                         {"tokens", p.tokens},
                         {"aggregation", opt.aggregation.to_string()},
                         {"layer_metrics", opt.layer_metrics.names()},
                         {"dtype", model->dtype() == torch::kBFloat16 ? "bf16" : model->dtype() == torch::kFloat16 ? "fp16" : "fp32"},
                         {"device", model->device().str()},
                         {"seconds", p.seconds}};
  if (opt.layer_metrics.needs_logits()) prov["full_model_loss"] = layers.full_model_loss();
  s.provenance_json = prov.dump();
  return s;
}

}  // namespace minipuzzle
