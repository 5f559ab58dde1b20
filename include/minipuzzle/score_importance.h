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

// Scores `model` (any dtype/device) on `data`. The result's hashes are left
// empty: the caller knows which checkpoint the model came from.
ImportanceScores score_importance(HybridLM& model, const IndexedDataset& data, const ScoreOptions& opt,
                                  const std::function<void(const ScoreProgress&)>& on_batch = {});

}  // namespace minipuzzle
