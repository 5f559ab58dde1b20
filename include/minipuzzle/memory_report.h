// What `minipuzzle inspect` prints: architecture, parameters per layer type,
// weight bytes at each precision and the memory breakdown at a deployment,
// as text or JSON. Also the JSON forms of Deployment, ParamCounts and
// MemoryBreakdown that candidates.json reuses.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "minipuzzle/memory_model.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle {

// {"weights": "fp4", "kv_cache": "fp8", "state": "bf16", "context": N,
//  "batch": N, "workspace_bytes": X}
nlohmann::json deployment_to_json(const Deployment& d);
// Throws InputError naming `source` and the key on missing or bad values.
Deployment deployment_from_json(const nlohmann::json& j, const std::string& source);

// {"total", "non_embedding", "embeddings", "lm_head", "final_norm",
//  "per_layer": {"mamba", "attention", "mlp"}, "by_type": {"mamba", "attention", "mlp"}}
nlohmann::json params_to_json(const ParamCounts& p);
ParamCounts params_from_json(const nlohmann::json& j, const std::string& source);

// {"weights_bytes", "kv_cache_bytes", "mamba_ssm_bytes", "mamba_conv_bytes",
//  "workspace_bytes", "total_bytes", "total_gib"}
nlohmann::json memory_to_json(const MemoryBreakdown& m);
MemoryBreakdown memory_from_json(const nlohmann::json& j, const std::string& source);

// {"source", "architecture": {pattern, layers, counts, widths...},
//  "parameters": params_to_json, "weight_bytes": {"bf16": B, "fp8": B,
//  "fp4": B, "nvfp4": B}, "deployment": ..., "memory": memory_to_json}
nlohmann::json inspect_json(const ModelConfig& c, const Deployment& d, const std::string& source);
// The same, for people: aligned columns, bytes in GiB, counts with commas.
std::string inspect_text(const ModelConfig& c, const Deployment& d, const std::string& source);

}  // namespace minipuzzle
