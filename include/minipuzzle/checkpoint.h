// Checkpoint directories <-> HybridLM: config.json + safetensors weights.
//
// Reads Hub names (`backbone.*`) and transformers-5 names (`model.*`);
// writes Hub names with {"format": "pt"} metadata. Every tensor is checked
// for presence, shape and dtype, with errors that name tensor and file.
//
// FP8 checkpoints (save_model with dtype torch::kFloat8_e4m3fn, `minipuzzle
// export --dtype fp8`) use the layout of transformers' FineGrainedFP8
// ("quant_method": "fp8", DeepSeek-V3 style) with one scale per output row:
//   * every 2-D projection `<module>.weight` whose module name ends in `_proj`
//     (Mamba in_proj/out_proj, attention q/k/v/o_proj, MLP up/down_proj) is
//     stored as F8_E4M3 [rows, cols] plus `<module>.weight_scale_inv` F32
//     [rows, 1]; weight = fp8 * weight_scale_inv, with
//     weight_scale_inv = max_j |w[i, j]| / 448 (1 for an all-zero row) and
//     fp8 = round-to-nearest-even(clamp(w / weight_scale_inv, +-448));
//   * everything else stays BF16: embeddings and lm_head (the logits are the
//     most sensitive to weight error, and transformers' FP8 loader keeps
//     lm_head unquantized by default), norms, conv1d, A_log, D, dt_bias, biases;
//   * config.json gets "torch_dtype": "bfloat16" and
//     "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
//     "activation_scheme": "dynamic", "weight_block_size": [1, K],
//     "modules_to_not_convert": ["lm_head"]}, K = the widest quantized input,
//     so a block is one whole row of every projection. bf16/fp16/fp32 exports
//     carry no quantization_config (any that was read is dropped).
// Per-row scales keep the error of a row at the FP8 rounding error of its own
// largest values: |w - dequant(w)| <= 2^-4 |w| + 2^-10 scale per element.
// The loader dequantizes (in fp32) into the model dtype; it accepts any 2-D
// scale grid that tiles the weight exactly ([rows, 1] per row, [1, 1] per
// tensor, or blocks such as [rows/128, cols/128]).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {

// The Hub name for a name found in a checkpoint file ("model.x" -> "backbone.x").
std::string hub_tensor_name(const std::string& file_name);

// Loads config.json and the weights of DIR into a model of `dtype` on `device`:
// the model is built in that dtype on that device and each tensor is read
// into it from the mapped file (no fp32 or host copy of the whole model).
HybridLM load_model(const std::filesystem::path& dir, torch::ScalarType dtype = torch::kFloat32,
                    torch::Device device = torch::kCPU);

// Copies the checkpoint's weights into an existing model (shapes must match).
void load_weights(HybridLM& model, const CheckpointFiles& files, const std::string& source);
class CheckpointReader;
void load_weights(HybridLM& model, const CheckpointReader& reader);

// Writes config.json + weights (Hub names, `dtype`) as one atomic directory.
// `dtype` is kFloat32, kBFloat16, kFloat16, or kFloat8_e4m3fn for the FP8
// layout above.
void save_model(HybridLM& model, const std::filesystem::path& out_dir, torch::ScalarType dtype,
                uint64_t max_shard_bytes = 5'000'000'000ULL);

// What save_model writes, in two halves: the weights copied to the host in
// the file's dtype (with the config.json to go with them), taken at one
// moment, and the writing, which may happen later and on another thread
// (the trainer writes checkpoints while it trains on).
struct ModelSnapshot {
  ModelConfig config;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // Hub names, CPU, contiguous
};
// own_copy: copy every tensor even when it is on the CPU in `dtype` already
// (needed when the model changes before the write; save_model, which writes
// at once, shares those instead: no second copy of a large CPU model).
ModelSnapshot snapshot_model(HybridLM& model, torch::ScalarType dtype, bool own_copy = true);
void write_model_snapshot(const ModelSnapshot& snapshot, const std::filesystem::path& out_dir,
                          uint64_t max_shard_bytes = 5'000'000'000ULL);

// --- FP8 (E4M3) with per-row scales ---
constexpr double kFp8E4M3Max = 448.0;

// True for the weights the FP8 layout quantizes: "<...>_proj.weight".
bool is_fp8_projection(const std::string& hub_name);
// "<module>.weight" -> "<module>.weight_scale_inv".
std::string fp8_scale_name(const std::string& weight_name);

struct Fp8Rows {
  torch::Tensor values;     // float8_e4m3fn [rows, cols]
  torch::Tensor scale_inv;  // float32 [rows, 1]
};
// Quantizes a 2-D tensor row by row (std::invalid_argument for other ranks
// or non-finite values).
Fp8Rows quantize_fp8_rows(const torch::Tensor& weight);
// values * scale_inv in fp32, for any scale grid [R, C] that tiles
// values [rows, cols] exactly (rows % R == 0, cols % C == 0).
torch::Tensor dequantize_fp8(const torch::Tensor& values, const torch::Tensor& scale_inv);

}  // namespace minipuzzle
