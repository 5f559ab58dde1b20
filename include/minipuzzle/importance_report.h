// report.md for a scores directory: what was measured on what, the layer
// table with ranks per type, width summaries and a PNG of layer importance
// coloured by layer type (layer_importance.png).
#pragma once

#include <filesystem>

#include "minipuzzle/importance_scores.h"

namespace minipuzzle {

void write_importance_report(const ImportanceScores& scores, const ModelConfig& config,
                             const std::filesystem::path& dir);

}  // namespace minipuzzle
