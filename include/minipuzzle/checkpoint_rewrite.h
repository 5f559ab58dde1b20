// A checkpoint written from another one tensor by tensor: read a row chunk,
// slice it, convert it, write it, drop it. `export` (every tensor kept, a new
// dtype) and `prune` (rows and columns kept per the PrunePlan) are both this,
// so neither ever holds the model: their memory is one chunk (at most
// kRewriteChunkElements values in fp32) plus the file pages being read.
// The bytes written are those of loading the whole model in fp32, slicing it
// and saving it in `dtype` (save_model), which is the definition they equal.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/model_config.h"
#include "minipuzzle/weight_quantization.h"

namespace minipuzzle {

// One output tensor: `source` restricted to `rows` of dim 0, then `cols` of
// dim 1 (an empty list keeps that dim whole), giving `shape`.
struct TensorRecipe {
  std::string name;    // Hub name in the output
  std::string source;  // Hub name in the source checkpoint
  std::vector<int64_t> rows;
  std::vector<int64_t> cols;
  std::vector<int64_t> shape;  // output shape
};

// Values converted per chunk: 16M (64 MiB in fp32).
constexpr int64_t kRewriteChunkElements = int64_t{1} << 24;

// Every tensor of a model of `config` kept whole (Hub names and shapes).
std::vector<TensorRecipe> identity_recipes(const ModelConfig& config);

// Applies a recipe to an in-memory tensor (the in-memory twin of the streamed
// path: rows, then columns).
torch::Tensor apply_recipe(const torch::Tensor& source, const TensorRecipe& recipe);

// What a compressed-tensors export did to each projection weight: its
// relative Frobenius error ||W' - W|| / ||W|| (W in fp32 as read, W' the
// dequantized weight), or why it stayed bf16 (a width the format cannot pack).
struct QuantizedTensorError {
  std::string name;
  std::vector<int64_t> shape;
  double relative_error = 0;
};
struct QuantizationReport {
  WeightFormat format = WeightFormat::kFp8Channel;
  bool dequantized = false;
  std::vector<QuantizedTensorError> quantized;                  // name order
  std::vector<std::pair<std::string, std::string>> kept_bf16;  // name, reason
  double mean_relative_error() const;
  const QuantizedTensorError* worst() const;  // nullptr when nothing was quantized
  nlohmann::json to_json() const;
};

// Beyond the plain dtype: a compressed-tensors weight format (the rest of the
// model in bf16), or that format's dequantized weights W' as a plain bf16
// checkpoint (`dequantized`: the model a serving engine runs, for our own
// eval/logits); `add_files` writes extra files into the staging directory
// before it is committed (tokenizer, model card), so they land atomically
// with the weights.
struct RewriteOptions {
  std::optional<WeightFormat> quantize;
  bool dequantized = false;
  std::function<void(const std::filesystem::path& staging)> add_files;
  QuantizationReport* report = nullptr;  // filled when quantize is set
};

// Writes `out` (config.json of `target` + weights in `dtype`: kFloat32,
// kBFloat16, kFloat16, or kFloat8_e4m3fn for the per-row FP8 layout of
// checkpoint.h; with options.quantize, dtype must be kBFloat16 and the
// projections are written in that compressed-tensors format, see
// weight_quantization.h) atomically. `source_config` is the source checkpoint's
// architecture: every tensor it describes is checked in `reader` (presence,
// shape, dtype; no unexpected extras) before anything is written.
// Returns the number of parameters written.
int64_t rewrite_checkpoint(const CheckpointReader& reader, const ModelConfig& source_config,
                           const ModelConfig& target, const std::vector<TensorRecipe>& recipes,
                           torch::ScalarType dtype, const std::filesystem::path& out,
                           uint64_t max_shard_bytes = 5'000'000'000ULL, const RewriteOptions& options = {});

// The dtype a tensor is written in when the model's other tensors go in
// `plain`: the MoE router's e_score_correction_bias stays fp32 (as
// transformers keeps it), everything else is `plain`.
torch::ScalarType stored_dtype(const std::string& name, torch::ScalarType plain);

// config.json of a model written in `dtype`: torch_dtype, and for FP8 the
// quantization_config whose block is [1, widest quantized input]; any
// quantization_config that was read is dropped (it described other weights).
ModelConfig saved_config(const ModelConfig& config, torch::ScalarType dtype, int64_t widest_fp8_input);

// config.json "quantization_config" of a compressed-tensors export in `f`:
// every Linear quantized except lm_head and the projections in `kept_bf16`
// (Hub weight names); embeddings, norms and conv1d are listed too (they are
// not Linear layers, so this only documents that they stay bf16). Entries are
// "re:" patterns on the module name's tail so they match both the Hub
// ("backbone.") and transformers-5 ("model.") module names.
nlohmann::json compressed_tensors_config(WeightFormat f, const std::vector<std::string>& kept_bf16);

}  // namespace minipuzzle
