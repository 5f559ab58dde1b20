// Importance scores of one checkpoint: what `minipuzzle score` measures and
// `search` / `prune` read back. Plain C++ (no LibTorch).
//
// On disk (SCORES_DIR/importance.safetensors, every tensor F32):
//   layer.mse, layer.kl, layer.loss, layer.bi   [n_layers]  drop-one layer metrics
//   hidden                                      [hidden_size] embedding channels
//   layers.{i}.ffn                              [intermediate_size]  MLP layer i
//   layers.{i}.attention_heads                  [num_attention_heads] attention layer i
//   layers.{i}.mamba_channels                   [mamba_num_heads * mamba_head_dim]
//   layers.{i}.mamba_heads                      [mamba_num_heads]
//   layers.{i}.mamba_head_channels              [mamba_head_dim]
//   layers.{i}.moe_experts                      [n_routed_experts] MoE layer i: weighted output
//                                               L2 per routed token (ranks experts)
//   layers.{i}.moe_expert_frequency             [n_routed_experts] slots / tokens (router load)
//   layers.{i}.moe_expert_weight                [n_routed_experts] mean routing weight
//   layers.{i}.moe_expert_neurons               [moe_intermediate_size] summed over experts
//   layers.{i}.moe_shared_neurons               [moe_shared_expert_intermediate_size]
// plus SCORES_DIR/importance.json (tables, ranks, provenance, fingerprints).
// Higher always means "more important / more harm when removed".
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "minipuzzle/model_config.h"
#include "minipuzzle/search_importance.h"

namespace minipuzzle {

// The layer metrics score can measure, in the order they are reported.
// mse: MSE of the final hidden state (after norm_f) vs the full model;
// kl: KL(full || dropped) of the next-token distributions; loss: LM-loss
// increase; bi: block influence 1 - cos(block input, block output).
const std::vector<std::string>& layer_metric_names();

struct ImportanceScores {
  // Identifies the model the scores belong to (see checkpoint_fingerprint).
  std::string config_hash;
  std::string weights_hash;

  // metric name -> one value per layer (pattern order); only measured metrics.
  std::map<std::string, std::vector<float>> layer;
  std::vector<float> hidden;  // [hidden_size], aggregated over every norm output

  // Per layer; a vector is empty when layer i has no such axis.
  std::vector<std::vector<float>> ffn;
  std::vector<std::vector<float>> attention_heads;
  std::vector<std::vector<float>> mamba_channels;       // channel c = head c / P, dim c % P
  std::vector<std::vector<float>> mamba_heads;          // L2 of the head's channel scores
  std::vector<std::vector<float>> mamba_head_channels;  // dim p: L2 over heads of channel (h, p)
  // MoE (E) layers; see moe_statistics.h for what each measures.
  std::vector<std::vector<float>> moe_experts;           // per routed expert: the ranking score
  std::vector<std::vector<float>> moe_expert_frequency;  // per routed expert: router load
  std::vector<std::vector<float>> moe_expert_weight;     // per routed expert: mean routing weight
  std::vector<std::vector<float>> moe_expert_neurons;    // expert-FFN neuron, summed over experts
  std::vector<std::vector<float>> moe_shared_neurons;    // shared-expert neuron

  // Free-form provenance written to importance.json ("data", "samples",
  // "seq_len", "aggregation", "dtype", "seconds", ...), as a JSON object text.
  std::string provenance_json = "{}";

  // The metric that ranks layers: mse when measured (the paper's), else kl,
  // loss, bi in that order.
  std::string primary_layer_metric() const;

  // Throws InputError (one line naming `source`) when these scores do not
  // fit `config`: wrong lengths, missing axes, a different config hash.
  void validate(const ModelConfig& config, const std::string& source) const;

  // The plain vectors the architecture search consumes. Per-layer width scores
  // are combined so that kept_fraction(top-k) equals the average over layers
  // of the fraction each layer keeps (each layer sorted and normalised).
  SearchImportance to_search_importance(const ModelConfig& config) const;
};

// Ranks of every layer per measured metric (1 = most important; ties: the
// earlier layer), overall and within the layer's type.
struct LayerRanks {
  std::map<std::string, std::vector<int64_t>> overall, within_type;
};
LayerRanks layer_ranks(const ImportanceScores& scores, const ModelConfig& config);

// Hash of the model config (canonical JSON) and of the weights (names,
// dtypes, shapes and a sample of each tensor's bytes; not a cryptographic
// hash, an identity check that costs milliseconds on a 100 GB checkpoint).
struct CheckpointFingerprint {
  std::string config_hash;
  std::string weights_hash;  // empty when DIR holds only config.json
};
CheckpointFingerprint checkpoint_fingerprint(const std::filesystem::path& dir);
std::string config_fingerprint(const ModelConfig& config);

// Writes importance.safetensors + importance.json into `dir` (created if
// absent; files replaced atomically). `config` gives the layer types for the
// JSON table.
void save_importance(const ImportanceScores& scores, const ModelConfig& config, const std::filesystem::path& dir);

// Reads SCORES_DIR back. InputError for a missing or malformed directory.
ImportanceScores load_importance(const std::filesystem::path& dir);

// load_importance + validate against a checkpoint dir (its config hash; and
// its weights hash when the checkpoint has weights and the scores have one).
ImportanceScores load_importance_for(const std::filesystem::path& scores_dir, const std::filesystem::path& model_dir);

}  // namespace minipuzzle
