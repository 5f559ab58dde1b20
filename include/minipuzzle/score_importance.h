// `minipuzzle score` as a library call: calibration batches from a dataset,
// width statistics and drop-one layer metrics in one pass over them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/layer_importance.h"
#include "minipuzzle/streamed_model.h"
#include "minipuzzle/width_statistics.h"

namespace minipuzzle {

struct ScoreOptions {
  int64_t samples = 1024;  // calibration windows
  int64_t seq_len = 2048;
  int64_t batch = 1;
  uint64_t seed = 1234;  // which windows (random_windows)
  Aggregation aggregation;
  LayerMetrics layer_metrics;
};

// After every batch: batches done, of how many, tokens done, seconds so far.
struct ScoreProgress {
  int64_t batch = 0, batches = 0;
  uint64_t tokens = 0;
  double seconds = 0;
};

// Start offsets of the calibration windows: `samples` windows of seq_len+1
// tokens drawn with `seed`. InputError when the dataset holds fewer than
// samples x seq_len tokens (scores from heavily overlapping windows would
// claim more data than exists).
std::vector<uint64_t> calibration_windows(const IndexedDataset& data, const ScoreOptions& opt);

// What scoring needs beyond a plain forward, for plan_residency: the drop-one
// metrics keep n+1 hidden states per batch, and kl/loss their logit
// buffers (the chunk scratch, the full model's log-probabilities and a pass
// over the head).
ResidencyOptions score_residency_needs(const ModelConfig& config, const ScoreOptions& opt, torch::ScalarType dtype);

// Scores `model` (any dtype/device) on `data`. The result's hashes are left
// empty: the caller knows which checkpoint the model came from.
ImportanceScores score_importance(HybridLM& model, const IndexedDataset& data, const ScoreOptions& opt,
                                  const std::function<void(const ScoreProgress&)>& on_batch = {});
// The same on a model whose weights may be streamed (streamed_model.h):
// layer-major over the plan's groups of batches; the scores have the bits
// of the resident run.
ImportanceScores score_importance(ForwardModel& model, const IndexedDataset& data, const ScoreOptions& opt,
                                  const std::function<void(const ScoreProgress&)>& on_batch = {});

}  // namespace minipuzzle
