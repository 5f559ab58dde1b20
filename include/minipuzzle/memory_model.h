// Memory model: exact parameter counts per layer type and the bytes one
// inference instance needs (weights, KV cache, Mamba SSM + conv state,
// workspace), from a ModelConfig alone, so users can plan for a model they
// have not downloaded. Plain C++ (no LibTorch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "minipuzzle/model_config.h"

namespace minipuzzle {

// Storage formats. As weight precisions, fp8, nvfp4 and int4 are the export
// formats (weight_format.h): the projections in that format with its scales,
// every other tensor bf16, byte for byte what `export --dtype` writes
// (weight_bytes). fp4 is the paper's accounting instead: every parameter at
// 4 bits, no scales (it reproduces the paper's 31.7 GiB; no export writes
// it). For the KV cache and the Mamba state a precision is just its bits per
// value (precision_bits).
enum class Precision { Fp32, Bf16, Fp16, Fp8, Fp4, Nvfp4, Int4 };

// Bits per value, block scales included: nvfp4 4 + 8/16 = 4.5 (the global
// scale aside), int4 4 + 16/128 = 4.125, fp8 8 (its per-row scale aside).
double precision_bits(Precision p);
const char* precision_name(Precision p);  // "fp32", "bf16", ..., "nvfp4"
// Throws InputError "<what>: unknown precision 'x'; expected ..." on bad text.
Precision parse_precision(const std::string& text, const std::string& what = "precision");

// "31.7GiB", "500MiB", "32GB", "1e9" (bytes) -> bytes. Binary (KiB, MiB, GiB,
// TiB) and decimal (KB, MB, GB, TB) suffixes, case-insensitive.
// Throws InputError naming `what` on bad text or a negative value.
double parse_bytes(const std::string& text, const std::string& what = "size");

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// "31.68 GiB", "812.4 MiB", "96.0 KiB", "512 B": readable for a 56B model and
// a test-sized one alike.
std::string format_bytes(double bytes);

struct Deployment {
  Precision weights = Precision::Bf16;
  Precision kv_cache = Precision::Bf16;
  Precision state = Precision::Bf16;  // Mamba SSM state and conv state
  int64_t context = 8192;              // tokens per sequence held in the KV cache
  int64_t batch = 1;                   // concurrent sequences
  double workspace_bytes = 0;          // activations / allocator headroom, added as is

  // Throws InputError when context or batch is not positive or workspace < 0.
  void validate() const;
};

// Parameters of one layer, its pre-norm (hidden_size) included.
int64_t mamba_layer_params(const ModelConfig& c);
int64_t attention_layer_params(const ModelConfig& c);
int64_t mlp_layer_params(const ModelConfig& c);
// An MoE layer with every routed expert: norm, router, experts, shared
// expert, latent projections. The router's e_score_correction_bias is a
// buffer in transformers and not counted (E fp32 values per layer).
int64_t moe_layer_params(const ModelConfig& c);
// The routed experts of one MoE layer alone (all E of them).
int64_t moe_routed_expert_params(const ModelConfig& c);
int64_t layer_params(const ModelConfig& c, LayerType t);

struct ParamCounts {
  int64_t embeddings = 0;  // vocab x hidden
  int64_t lm_head = 0;     // vocab x hidden (untied)
  int64_t final_norm = 0;  // norm_f
  int64_t per_mamba_layer = 0, per_attention_layer = 0, per_mlp_layer = 0, per_moe_layer = 0;
  int64_t mamba = 0, attention = 0, mlp = 0, moe = 0;  // totals over the layers of each type
  int64_t moe_routed_experts = 0;  // all routed experts of all MoE layers (inside `moe`)
  int64_t total = 0;
  // Used by one token: the total less the routed experts it is not sent to
  // ((E - k)/E of them); equal to total for a model without MoE layers.
  // Embeddings and lm_head included.
  int64_t active = 0;

  int64_t non_embedding() const { return total - embeddings - lm_head; }
};

ParamCounts count_parameters(const ModelConfig& c);

// Per-sequence state of one Mamba layer, in values: SSM H*P*N plus the conv
// window (K-1)*conv_dim that decoding keeps.
int64_t mamba_ssm_state_values(const ModelConfig& c);
int64_t mamba_conv_state_values(const ModelConfig& c);
// K and V of one attention layer for one token, in values.
int64_t kv_values_per_token_per_layer(const ModelConfig& c);

struct MemoryBreakdown {
  double weights = 0;     // bytes
  double kv_cache = 0;
  double mamba_ssm = 0;
  double mamba_conv = 0;
  double workspace = 0;
  double total = 0;

  double state() const { return mamba_ssm + mamba_conv; }
};

// The projection weights of a model, [rows, cols] (cols: the input width,
// the axis a format's groups run along), `count` of each: the tensors a
// quantized export converts (weight_format.h).
struct ProjectionShape {
  std::string name;  // "mamba in_proj", "attention q_proj", "moe expert up_proj", ...
  int64_t rows = 0, cols = 0, count = 0;
};
std::vector<ProjectionShape> projection_shapes(const ModelConfig& c);

// Bytes of the weights at `p`. fp32/bf16/fp16: every parameter at that
// width. fp8/nvfp4/int4: what the export writes: each projection whose width
// the format's group divides in that format with its scale tensors, every
// other parameter (embeddings, lm_head, norms, conv1d, A_log, D, dt_bias,
// the router, projections it cannot pack) bf16. fp4: every parameter 4 bits.
double weight_bytes(const ModelConfig& c, Precision p);

// Weights as weight_bytes(c, d.weights); see memory_model.cpp for the fp4
// accounting that reproduces the paper's numbers.
MemoryBreakdown memory_breakdown(const ModelConfig& c, const Deployment& d);

}  // namespace minipuzzle
