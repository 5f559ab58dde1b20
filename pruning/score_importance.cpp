#include "minipuzzle/score_importance.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "minipuzzle/errors.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/logit_comparison.h"
#include "minipuzzle/moe_statistics.h"
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

ResidencyOptions score_residency_needs(const ModelConfig& cfg, const ScoreOptions& opt, torch::ScalarType dtype) {
  ResidencyOptions o;
  const bool drops = opt.layer_metrics.mse || opt.layer_metrics.needs_logits();
  o.states_per_batch = drops ? cfg.num_layers() + 1 : 1;
  if (opt.layer_metrics.needs_logits()) {
    const uint64_t gib = uint64_t{1} << 30;
    const uint64_t rows = static_cast<uint64_t>(opt.batch * opt.seq_len);
    const uint64_t row = static_cast<uint64_t>(cfg.vocab_size) * 4;
    const uint64_t chunk = std::min<uint64_t>(static_cast<uint64_t>(comparison_chunk_rows(cfg.vocab_size)), rows) * row;
    const uint64_t full = std::min<uint64_t>(rows * row, gib);
    // A pass over the head gathers at most comparison_head_pass_bytes of logits,
    // at most every dropped layer's (and the reference's) rows of a batch.
    const uint64_t pass = std::min<uint64_t>(static_cast<uint64_t>(cfg.num_layers() + 1) * 2 * rows * row,
                                             std::max(comparison_head_pass_bytes(cfg, dtype), 2 * chunk));
    o.extra_working_bytes = 4 * chunk + full + pass;
  }
  return o;
}

ImportanceScores score_importance(HybridLM& model, const IndexedDataset& data, const ScoreOptions& opt,
                                  const std::function<void(const ScoreProgress&)>& on_batch) {
  ForwardModel resident(model);
  return score_importance(resident, data, opt, on_batch);
}

ImportanceScores score_importance(ForwardModel& fm, const IndexedDataset& data, const ScoreOptions& opt,
                                  const std::function<void(const ScoreProgress&)>& on_batch) {
  const auto starts = calibration_windows(data, opt);
  HybridLM& model = fm.model();
  const ModelConfig& cfg = model->config();
  torch::NoGradGuard no_grad;
  model->eval();

  WidthStatistics width(model, opt.aggregation);
  MoeStatistics moe(cfg, opt.aggregation);
  LayerImportance layers(cfg, opt.layer_metrics, comparison_head_pass_bytes(cfg, model->dtype()));
  model->observers().add(&width);
  if (cfg.has_moe()) model->observers().add(&moe);
  const auto t0 = std::chrono::steady_clock::now();
  ScoreProgress p;
  p.batches = (opt.samples + opt.batch - 1) / opt.batch;
  // Layer-major over groups of batches (one batch when resident), so a
  // streamed model reads each block once per group.
  const int64_t group = std::max<int64_t>(fm.plan().streamed ? fm.plan().group_batches : 1, 1);
  const torch::Device device = model->device();
  try {
    for (std::size_t i = 0; i < starts.size();) {
      std::vector<torch::Tensor> inputs, targets;
      std::vector<std::size_t> sizes;
      for (int64_t k = 0; k < group && i < starts.size(); ++k) {
        std::vector<uint64_t> part(starts.begin() + i, starts.begin() + std::min(starts.size(), i + opt.batch));
        auto rows = to_device_async(gather_windows(data, part, opt.seq_len, cfg.vocab_size), device);
        inputs.push_back(rows.narrow(1, 0, opt.seq_len));
        targets.push_back(rows.narrow(1, 1, opt.seq_len));
        sizes.push_back(part.size());
        i += part.size();
      }
      layers.add_group(fm, inputs, targets);
      for (std::size_t size : sizes) {
        ++p.batch;
        p.tokens += size * static_cast<uint64_t>(opt.seq_len);
        p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (on_batch) on_batch(p);
      }
    }
  } catch (...) {
    model->observers().remove(&width);
    model->observers().remove(&moe);
    throw;
  }
  model->observers().remove(&width);
  model->observers().remove(&moe);

  ImportanceScores s;
  s.layer = layers.result();
  width.fill(s);
  moe.fill(s);
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
                         {"residency", fm.plan().streamed ? "streamed" : "resident"},
                         {"seconds", p.seconds}};
  if (opt.layer_metrics.needs_logits()) prov["full_model_loss"] = layers.full_model_loss();
  s.provenance_json = prov.dump();
  return s;
}

}  // namespace minipuzzle
