// The space of architectures the search enumerates: how many layers of each
// type to keep, and the widths (FFN, hidden, Mamba heads and head dim,
// attention heads), each an arithmetic range no wider than the parent's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "minipuzzle/model_config.h"

namespace minipuzzle {

// min, min+step, ..., max. (max - min) must be a whole number of steps so the
// parent's own value (normally max) is always a point of the grid.
struct IntAxis {
  int64_t min = 0, max = 0, step = 1;

  static IntAxis fixed(int64_t v) { return {v, v, 1}; }
  std::vector<int64_t> values() const;  // ascending
  int64_t size() const { return step > 0 && max >= min ? (max - min) / step + 1 : 0; }
  std::string to_string() const;  // "24576:32768:1024" or "30720"
};

struct CandidateSpace {
  IntAxis mamba_layers, attention_layers, mlp_layers;  // layers kept per type
  IntAxis ffn, hidden, mamba_heads, mamba_head_dim, attention_heads;
  // MoE (E) layers: how many to keep, routed experts kept per layer (a
  // multiple of n_group, at least num_experts_per_tok and two per group),
  // expert FFN width and shared-expert width. Fixed at the parent's values
  // (0) for a model without E layers.
  IntAxis moe_layers, moe_experts, moe_expert_ffn, moe_shared_ffn;

  // Bounds. Depth: at least ceil(parent layers * (1 - r)) layers kept in all.
  // Width: each width keeps at least ceil(parent width * (1 - r)); grid
  // points below are left out.
  double max_depth_reduction = 1.0;
  double max_width_reduction = 1.0;
  // Filters on feasible candidates. maximal_only: drop a candidate when one
  // step up on any axis still fits the budget (it leaves budget unused and a
  // larger neighbour dominates it). min_budget_use: drop candidates below
  // this fraction of the budget.
  bool maximal_only = false;
  double min_budget_use = 0.0;

  // Layer counts 0..parent per type, every width fixed at the parent's.
  static CandidateSpace depth_only(const ModelConfig& parent);
  // The paper's grid: depth_only plus FFN from 3/4 of the parent to the
  // parent in steps of 1024 (24576..32768 for the 56B).
  static CandidateSpace paper_grid(const ModelConfig& parent);
  // Every axis: layers 0..parent; FFN step 1024, hidden step 256, Mamba heads
  // step n_groups, attention heads step kv heads, each down to half the
  // parent; Mamba head dim fixed; routed experts step n_group down to half
  // (never below what the router needs), expert FFN step 128 and shared
  // expert FFN step 256 down to half. Bounds as given.
  static CandidateSpace full(const ModelConfig& parent);

  // Sets one axis from "name=min:max:step", "name=min:max" (step 1 for
  // layers, the default step for widths) or "name=value". Names: mamba_layers,
  // attention_layers, mlp_layers, ffn, hidden, mamba_heads, mamba_head_dim,
  // attention_heads, moe_layers, moe_experts, moe_expert_ffn, moe_shared_ffn.
  // Throws InputError on an unknown name or bad numbers.
  void set_axis(const std::string& spec, const ModelConfig& parent);

  // Throws InputError when an axis breaks a rule: step <= 0, min > max, a
  // range not a whole number of steps, a value above the parent's, Mamba
  // heads not multiples of n_groups, attention heads not multiples of kv
  // heads, routed experts not multiples of n_group or below
  // num_experts_per_tok (or two per router group), widths not positive, bounds outside [0, 1]; or when the bounds
  // leave an axis empty.
  void validate(const ModelConfig& parent) const;

  // Width values left after max_width_reduction (ascending).
  std::vector<int64_t> allowed(const IntAxis& axis, int64_t parent_value) const;
  int64_t min_layers(const ModelConfig& parent) const;
  // Grid points before bounds and duplicate removal.
  double grid_size() const;
};

// The fewest routed experts a pruned MoE layer of `parent` may keep: a
// multiple of n_group with at least two per group, and enough in the
// topk_group groups a token uses for its num_experts_per_tok experts (0 for
// a model without E layers).
int64_t min_moe_experts(const ModelConfig& parent);

}  // namespace minipuzzle
