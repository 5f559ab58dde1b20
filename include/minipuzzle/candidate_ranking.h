// Ranking search candidates on data (the paper ranked its ~400 candidates
// on validation tokens by next-token accuracy and agreement with the
// parent): prune each candidate in memory, run it on the same windows as
// the parent and measure
//   loss       LM loss (nats/token)
//   accuracy   next-token top-1 accuracy
//   agreement  share of tokens where its greedy token equals the parent's
//   kl         KL(parent || candidate), nats/token
// then re-sort by `by` (agreement: highest first, ties accuracy; accuracy:
// highest first; loss / kl: lowest first) and renumber the ranks. The
// proxy rank is kept as measured["proxy_rank"].
//
// Cost: one parent pass (its final hidden states are cached: tokens x
// hidden_size in the model dtype) plus one pass per candidate.
//
// Streamed (a ResidencyPlan that streams, DESIGN.md "Scale: where weights
// live"): neither the parent nor a candidate is ever whole. The parent's pass
// streams from its checkpoint; each candidate is a ForwardModel cut from the
// parent's checkpoint by prune_recipes (the one definition of pruning), its
// blocks read and sliced as they run, layer-major over groups of batches.
// The comparison reads the parent's head once per pass over many chunks of
// rows and cuts the candidate's head from it. The measures are bit-identical
// to the resident ranking (tests hold it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "minipuzzle/architecture_search.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/streamed_model.h"

namespace minipuzzle {

struct RankOptions {
  uint64_t tokens = 1 << 20;  // predicted tokens (whole windows, from the dataset start)
  int64_t seq_len = 2048;
  int64_t batch = 1;
  std::string by = "agreement";  // agreement | accuracy | loss | kl
  // Streamed: logits (bytes) gathered per read of the head; 0:
  // comparison_head_pass_bytes. Any value gives the same measures.
  uint64_t head_pass_bytes = 0;
};

// InputError on an unknown `by`, a dataset shorter than one window, or
// tokens below one window (what rank_candidates_on_data checks first; a
// command checks it before its search, too).
void check_rank_options(const RankOptions& options, const IndexedDataset& data);

// Throws check_rank_options' errors.
void rank_candidates_on_data(HybridLM& parent, const ImportanceScores& scores, SearchResult& result,
                             const IndexedDataset& data, const RankOptions& options,
                             const std::function<void(int64_t done, int64_t total)>& on_candidate = {});

// What ranking keeps besides one forward, for plan_residency: the parent's
// final hidden states of every window (kept for every candidate), the logits
// a pass over the head gathers for both models, the comparison's buffers.
ResidencyOptions rank_residency_needs(const ModelConfig& parent, const RankOptions& options, torch::ScalarType dtype);

// The parent read from DIR per `plan`: resident (loaded, then the ranking
// above) or streamed (see the top). Returns the most weight bytes held at
// any moment.
uint64_t rank_candidates_on_data(const std::filesystem::path& dir, torch::ScalarType dtype, torch::Device device,
                                 const ResidencyPlan& plan, const ImportanceScores& scores, SearchResult& result,
                                 const IndexedDataset& data, const RankOptions& options,
                                 const std::function<void(int64_t done, int64_t total)>& on_candidate = {});

}  // namespace minipuzzle
