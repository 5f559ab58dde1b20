// Constrained architecture search (MiniPuzzle step 2): enumerate a
// CandidateSpace exhaustively, keep the candidates whose memory fits the
// budget, rank them by a proxy score and return the top K.
//
// Proxy score (in [0, 1], higher is better):
//
//   proxy = sum over kept layers i of  s_i * w(type(i))  /  sum over all layers of s_i
//
//   s_i        = max(layer score i, 0) (all 1 when every score is <= 0)
//   w(mamba)   = h * kept_fraction(mamba heads, per group) * kept_fraction(head channels)
//   w(attn)    = h * kept_fraction(attention heads, per kv head)
//   w(mlp)     = h * kept_fraction(FFN channels)
//   w(moe)     = h * (r * kept_fraction(routed experts, per router group)
//                      * kept_fraction(expert FFN channels)
//                    + (1 - r) * kept_fraction(shared-expert channels))
//                r = the routed experts' share of the layer's active weights
//                    (k experts against the shared expert) in the parent
//   h          = kept_fraction(hidden channels)
//
// Why: a layer score measures what the model loses when the whole layer
// goes; narrowing a layer removes a share of its channel importance, so to
// first order it loses that share of the layer's score. Hidden channels run
// through every layer, so their share scales all of them. The result is the
// share of the parent's importance the candidate keeps, comparable across
// candidates of any shape. Negative layer scores (layers whose removal
// helps) add nothing, so they are the first to go.
//
// Which layers: for a count n of a type the search keeps the n top-scoring
// layers of that type (ties: the earlier layer). Every layer of a type costs
// the same bytes for given widths and the proxy is a sum over layers with a
// per-type weight, so no other choice of n layers scores higher: the layer
// choice needs no knapsack, and enumerating counts x widths is exact.
//
// Candidates that differ only in an axis no kept layer uses (e.g. the FFN
// width of a candidate without MLP layers) are the same architecture: only
// the one at that axis' largest value is evaluated.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "minipuzzle/candidate_space.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/model_config.h"
#include "minipuzzle/search_importance.h"

namespace minipuzzle {

struct SearchOptions {
  Deployment deployment;
  double budget_bytes = 0;  // candidates need memory_breakdown().total <= budget
  int64_t top_k = 10;
  // Candidates need count_parameters().active <= this (per token: MoE
  // layers count num_experts_per_tok routed experts); 0 = no limit.
  double max_active_params = 0;
};

struct Candidate {
  int64_t rank = 0;  // 1 = best proxy
  ModelConfig config;
  std::vector<int64_t> kept_layers;     // parent layer indices, ascending
  std::vector<int64_t> dropped_layers;  // parent layer indices, ascending
  ParamCounts params;
  MemoryBreakdown memory;
  double proxy_score = 0;
  double layer_importance_kept = 0;  // sum of kept s_i / sum of s_i (widths ignored)
  double width_factor_mamba = 1, width_factor_attention = 1, width_factor_mlp = 1;  // w(type) above
  double width_factor_moe = 1;
  std::string why;
  // Measured on data by `search --rank-data` (loss, accuracy, agreement, kl,
  // tokens, proxy_rank); empty when the candidates were ranked by proxy only.
  std::map<std::string, double> measured;
};

struct SearchResult {
  Deployment deployment;
  double budget_bytes = 0;
  int64_t evaluated = 0;  // distinct candidates whose memory was computed
  int64_t feasible = 0;   // within the budget and passing the space's filters
  double min_memory_bytes = 0;  // smallest memory over the evaluated candidates
  double max_active_params = 0;  // the limit searched under (0 = none)
  double min_active_params = 0;  // smallest active parameter count over the evaluated candidates
  std::vector<Candidate> candidates;  // best first, at most top_k
};

// Throws InputError on a bad space or scores (see validate()), a non-positive
// budget or top_k, or when nothing fits: "... the smallest memory reachable
// in the allowed space is X GiB" (or, under max_active_params, "... the
// smallest active count reachable in the allowed space is N").
SearchResult search_architectures(const ModelConfig& parent, const SearchImportance& importance,
                                  const CandidateSpace& space, const SearchOptions& options);

// Same result, computed the plain way: builds every candidate's ModelConfig
// and runs memory_breakdown() on it. The definition the fast search is tested
// against, and the benchmark's baseline.
SearchResult search_architectures_reference(const ModelConfig& parent, const SearchImportance& importance,
                                            const CandidateSpace& space, const SearchOptions& options);

// The layers of `type` in the order the search keeps them (best first).
std::vector<int64_t> layer_keep_order(const ModelConfig& parent, const SearchImportance& importance, LayerType type);

}  // namespace minipuzzle
