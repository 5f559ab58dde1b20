// Which routed experts a pruned MoE layer keeps: the score each expert is
// ranked by, computed from what `minipuzzle score` recorded per expert
// (importance_scores.h). Plain C++. The one definition used by prune
// (plan_from_scores / plan_from_set), the streamed prune and search's
// --rank-data candidate cutting.
//
// Per routed expert e of a layer, with f_e = routed slots / tokens (its
// router load) and n_e = mean over its routed tokens of
// || routing weight x expert output ||_2 (ModelOpt's measure):
//   output_norm   n_e            how much the expert adds when it is chosen
//   frequency     f_e            how often it is chosen
//   contribution  f_e x n_e      its weighted-output norm per token of the
//                                data: what the layer loses without it
// output_norm ignores how often an expert is chosen: on an unbalanced router
// it can drop the experts that carry most tokens (examples/experiment/
// NOTES-moe.md measured it; that experiment chose the default).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "minipuzzle/importance_scores.h"

namespace minipuzzle {

enum class ExpertRanking { OutputNorm, Frequency, Contribution };

inline constexpr ExpertRanking kDefaultExpertRanking = ExpertRanking::Contribution;

// "output_norm" | "frequency" | "contribution"; InputError (one line) otherwise.
ExpertRanking parse_expert_ranking(const std::string& text);
const char* expert_ranking_name(ExpertRanking ranking);

// The scores MoE layer `layer`'s routed experts are ranked by (higher =
// kept first). Empty when `s` holds no expert scores for the layer (the
// caller reports that when it needs them). InputError when the ranking needs
// the routing frequency and the scores lack it or have another length.
std::vector<float> expert_ranking_scores(const ImportanceScores& s, int64_t layer, ExpertRanking ranking);

}  // namespace minipuzzle
