// PrunePlan: which parts of a parent model a pruned model keeps (MiniPuzzle
// step 3, before the weights are sliced by prune_model()). Plain C++.
//
// Every index list is in parent numbering and sorted ascending, so the kept
// units keep their relative order. Per-layer lists are indexed by the
// *parent* layer index (size = parent layers) and empty for a dropped layer
// or one without that axis.
//
// Group rules (what keeps the pruned model a valid Nemotron-H):
// - attention: query head h belongs to kv head h / (heads / kv_heads); every
//   kv head keeps the same number of query heads; kv heads are all kept.
// - Mamba: head h belongs to group h / (H / G); every group keeps the same
//   number of heads; groups and the B/C state are never pruned. The kept
//   head channels (P' of the head dim P) are the same for every head of a
//   layer.
// - MoE: routed expert e belongs to router group e / (E / n_group); every
//   group keeps the same number of experts (so n_group still divides the
//   count) and at least num_experts_per_tok are kept. The kept expert-FFN
//   neurons are the same in every kept expert; the shared expert is
//   narrowed on its own. The router keeps the rows (and correction-bias
//   entries) of the kept experts; latent projections are never narrowed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "minipuzzle/expert_ranking.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle {

struct PrunePlan {
  ModelConfig target;  // the pruned architecture

  std::vector<int64_t> kept_layers;  // parent layer indices, ascending; one per target layer
  std::vector<int64_t> hidden;       // kept hidden (embedding) channels; size = target.hidden_size

  std::vector<std::vector<int64_t>> ffn;                  // MLP layer i: kept FFN neurons
  std::vector<std::vector<int64_t>> attention_heads;      // attention layer i: kept query heads
  std::vector<std::vector<int64_t>> mamba_heads;          // Mamba layer i: kept heads
  std::vector<std::vector<int64_t>> mamba_head_channels;  // Mamba layer i: kept dims of every head
  std::vector<std::vector<int64_t>> moe_experts;          // MoE layer i: kept routed experts
  std::vector<std::vector<int64_t>> moe_expert_neurons;   // MoE layer i: kept neurons of every expert
  std::vector<std::vector<int64_t>> moe_shared_neurons;   // MoE layer i: kept shared-expert neurons

  // Throws InputError when the plan does not describe a valid pruning of
  // `parent`: a target config that changes an unprunable key (vocab, kv
  // heads, head_dim, state, groups, ...) or whose pattern is not the parent's
  // restricted to kept_layers; sizes that disagree with the target; indices
  // out of range, unsorted or duplicated; uneven heads per group.
  void validate(const ModelConfig& parent) const;

  // Keeps everything: prune_model() with it reproduces the parent exactly.
  static PrunePlan identity(const ModelConfig& parent);

  // One line: "pattern M*-M- -> M-M-; hidden 48 -> 32; ffn 96 -> 64; ...".
  std::string summary(const ModelConfig& parent) const;
};

// The plan that gives `target`, keeping the top-scoring units of every axis
// (ties: the lower index; each list sorted ascending): s.hidden,
// s.ffn[i], s.attention_heads[i] (top per kv head), s.mamba_heads[i] (top per
// group), s.mamba_head_channels[i], the routed experts by
// expert_ranking_scores(s, i, expert_ranking) (top per router group),
// s.moe_expert_neurons[i], s.moe_shared_neurons[i]. An axis kept whole needs
// no scores.
// `kept_layers` empty: keep, per layer type, the target's count of the
// best layers by s.layer[s.primary_layer_metric()]; the target pattern must
// equal the parent pattern restricted to those layers. InputError otherwise,
// or when scores a narrowed axis needs are missing or have the wrong length.
PrunePlan plan_from_scores(const ModelConfig& parent, const ImportanceScores& s, const ModelConfig& target,
                           std::vector<int64_t> kept_layers = {},
                           ExpertRanking expert_ranking = kDefaultExpertRanking);

// The plan for `minipuzzle prune --set key=value ...`. Keys:
//   hidden_size, intermediate_size, num_attention_heads, mamba_num_heads,
//   mamba_head_dim, n_routed_experts, moe_intermediate_size,
//   moe_shared_expert_intermediate_size
//                                     new widths (<= the parent's)
//   drop_layers=3,7,12                parent layer indices to drop
//   keep_mamba / keep_attention / keep_mlp / keep_moe=N
//                                     keep the N best layers of that type (by
//                                     layer score, among those not dropped)
// InputError (one line) on an unknown key, a key given twice, a non-number,
// a size above the parent's or below 1, heads that are not a multiple of
// num_key_value_heads / n_groups, routed experts that are not a multiple of
// n_group or fewer than num_experts_per_tok, or when no layer is left.
PrunePlan plan_from_set(const ModelConfig& parent, const ImportanceScores& s, const std::vector<std::string>& sets,
                        ExpertRanking expert_ranking = kDefaultExpertRanking);

}  // namespace minipuzzle
