// The importance scores the architecture search consumes: plain vectors, so
// search/ needs no LibTorch. The importance stage fills them from its files
// (importance.safetensors); tests and benchmarks use synthetic ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "minipuzzle/model_config.h"

namespace minipuzzle {

struct SearchImportance {
  // One score per parent layer (pattern order), higher = more harm when the
  // layer is dropped (e.g. LM-loss increase, KL, 1 - cos). Required.
  std::vector<double> layer;
  // Channel scores per width axis, any order (the search sorts them). Empty
  // means "no information": keeping k of n channels keeps k/n.
  std::vector<double> ffn;                  // intermediate_size
  std::vector<double> hidden;               // hidden_size (embedding channels)
  std::vector<double> mamba_heads;          // mamba_num_heads, head h in group h / (H/G)
  std::vector<double> mamba_head_channels;  // mamba_head_dim, shared by all heads
  std::vector<double> attention_heads;      // num_attention_heads, head h on kv head h / (heads/kv)
  // MoE (E) layers: routed expert e in router group e / (E / n_group)
  // (moe_experts ranks them), expert-FFN neurons (one width for every
  // expert) and shared-expert neurons.
  std::vector<double> moe_experts;          // n_routed_experts
  std::vector<double> moe_expert_neurons;   // moe_intermediate_size
  std::vector<double> moe_shared_neurons;   // moe_shared_expert_intermediate_size

  // Throws InputError when a vector's length does not match `parent` (scores
  // from another model), naming `source` and the vector.
  void validate(const ModelConfig& parent, const std::string& source = "scores") const;

  // Every layer scores 1, widths uninformative.
  static SearchImportance uniform(const ModelConfig& parent);
  // Deterministic pseudo-random positive scores (same seed, same scores on
  // every platform): stand-ins until real scores exist.
  static SearchImportance synthetic(const ModelConfig& parent, uint64_t seed = 1);
};

// Fraction of a width axis' importance kept when `kept` of `parent_size`
// channels survive, the best ones first. With `groups` > 1 the channels form
// that many equal consecutive groups and each keeps its best kept/groups
// (Mamba heads per group, attention heads per kv head), as pruning does.
// Negative scores count as 0; an empty or all-zero vector gives kept/parent.
double kept_fraction(const std::vector<double>& scores, int64_t parent_size, int64_t kept, int64_t groups = 1);
// kept_fraction for several kept sizes at once, sorting only once; equal to
// calling kept_fraction for each.
std::vector<double> kept_fractions(const std::vector<double>& scores, int64_t parent_size,
                                   const std::vector<int64_t>& kept, int64_t groups = 1);

}  // namespace minipuzzle
