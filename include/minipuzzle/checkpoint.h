// Checkpoint directories <-> HybridLM: config.json + safetensors weights.
//
// Reads Hub names (`backbone.*`) and transformers-5 names (`model.*`);
// writes Hub names with {"format": "pt"} metadata. Every tensor is checked
// for presence, shape and dtype, with errors that name tensor and file.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {

// The Hub name for a name found in a checkpoint file ("model.x" -> "backbone.x").
std::string hub_tensor_name(const std::string& file_name);

// Loads config.json and the weights of DIR into a model of `dtype` on `device`.
HybridLM load_model(const std::filesystem::path& dir, torch::ScalarType dtype = torch::kFloat32,
                    torch::Device device = torch::kCPU);

// Copies the checkpoint's weights into an existing model (shapes must match).
void load_weights(HybridLM& model, const CheckpointFiles& files, const std::string& source);

// Writes config.json + weights (Hub names, `dtype`) as one atomic directory.
void save_model(HybridLM& model, const std::filesystem::path& out_dir, torch::ScalarType dtype,
                uint64_t max_shard_bytes = 5'000'000'000ULL);

}  // namespace minipuzzle
