// candidates.json: the search result as `minipuzzle search` writes it and
// `minipuzzle prune --candidate candidates.json#i` reads it.
//
// {
//   "format": "minipuzzle-candidates", "version": 1,
//   "budget_bytes": 34037615820.8, "budget_gib": 31.7,
//   "deployment": {"weights": "fp4", "kv_cache": "fp8", "state": "bf16",
//                  "context": 1000000, "batch": 1, "workspace_bytes": 0},
//   "evaluated": 294634,        // distinct candidates whose memory was computed
//   "feasible": 254210,         // within budget and the space's filters
//   "min_memory_bytes": ...,    // smallest memory in the allowed space
//   "candidates": [             // best first
//     {"rank": 1, "proxy_score": 0.93, "layer_importance_kept": 0.95,
//      "width_factors": {"mamba": 1, "attention": 1, "mlp": 0.98},
//      "why": "rank 1 of ... ; 31.68 of 31.70 GiB",
//      "config": { Hub-style config.json of the candidate },
//      "kept_layers": [0, 1, ...],     // parent layer indices, ascending
//      "dropped_layers": [7, ...],
//      "params": { see params_to_json in memory_report.h },
//      "memory": { see memory_to_json in memory_report.h }}
//   ]
// }
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "minipuzzle/architecture_search.h"

namespace minipuzzle {

nlohmann::json candidates_to_json(const SearchResult& r);
// Throws InputError naming `source` and the key on a wrong format, version,
// missing keys, or kept/dropped layers that disagree with a candidate config.
SearchResult candidates_from_json(const nlohmann::json& j, const std::string& source);

void save_candidates(const SearchResult& r, const std::filesystem::path& file);  // atomic
SearchResult load_candidates(const std::filesystem::path& file);

}  // namespace minipuzzle
