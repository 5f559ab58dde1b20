// Structured pruning: slice a parent HybridLM's weights to a PrunePlan.
#pragma once

#include <vector>

#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/prune_plan.h"

namespace minipuzzle {

// A new model of plan.target (same dtype and device as `parent`) holding the
// parent's weights restricted to what the plan keeps (validated first;
// InputError when the plan does not fit the parent):
// - layers: the kept ones, in order;
// - hidden channels: columns of the embeddings, lm_head and every input
//   projection (in_proj, q/k/v_proj, up_proj), rows of every output
//   projection (out_proj, o_proj, down_proj), every block norm and norm_f;
// - MLP: up_proj rows and down_proj columns of the kept neurons;
// - attention: q_proj rows and o_proj columns of the kept query heads
//   (head_dim each); k/v_proj keep every kv head;
// - Mamba: for the kept channels c = h*P + p (kept head h, kept dim p) the
//   z and x rows of in_proj, the x rows of conv1d, the gated norm weight and
//   the out_proj columns; for the kept heads the dt rows of in_proj, A_log,
//   D and dt_bias. The B/C rows of in_proj and conv1d are kept whole.
// - MoE: the kept routed experts, renumbered 0.. in parent order, each
//   with up_proj rows / down_proj columns of the kept expert neurons; the
//   router's rows and e_score_correction_bias entries of the kept experts;
//   shared expert up_proj rows / down_proj columns of its kept neurons;
//   latent projections only lose hidden channels.
// The parent is not modified.
HybridLM prune_model(HybridLM& parent, const PrunePlan& plan);

// The same slicing as recipes, one per tensor of the pruned model (in the
// order above; shapes filled in), for `prune` to stream it from the parent's
// files without loading the parent: prune_model applies exactly these.
std::vector<TensorRecipe> prune_recipes(const ModelConfig& parent, const PrunePlan& plan);

}  // namespace minipuzzle
