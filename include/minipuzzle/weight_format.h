// The weight formats an export writes and what each stores, as plain facts
// (no LibTorch) shared by the exporter (weight_quantization.h,
// checkpoint_rewrite.cpp) and the memory model (memory_model.h), so the
// bytes a search plans for are the bytes an export writes.
//
// Which tensors a quantized export converts: the mixers' 2-D projection
// weights (Hub names ending "_proj.weight": in_proj, out_proj, q/k/v/o_proj,
// up/down_proj, the experts' and the shared expert's, the latent
// projections) whose width is a multiple of the format's group. Everything
// else (embeddings, lm_head, norms, conv1d, A_log, D, dt_bias, the router)
// stays bf16 and is listed in the config's `ignore`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/dtype.h"

namespace minipuzzle {

enum class WeightFormat { kFp8Channel, kNvfp4, kInt4Group128 };

// "fp8" | "nvfp4" | "int4" -> format; nullopt for anything else.
std::optional<WeightFormat> weight_format_from_name(const std::string& name);
const char* weight_format_name(WeightFormat f);         // "fp8", "nvfp4", "int4"
const char* compressed_tensors_format(WeightFormat f);  // "float-quantized", ...
// Columns that must divide a weight's width (1, 16, 128).
int64_t weight_format_group(WeightFormat f);

// One stored tensor of a quantized weight: name suffix after the module
// ("weight_packed", ...), dtype and shape.
struct QuantizedPart {
  std::string suffix;
  DType dtype;
  std::vector<int64_t> shape;
};
// The tensors `f` stores for a [rows, cols] weight, in name order.
std::vector<QuantizedPart> quantized_parts(WeightFormat f, int64_t rows, int64_t cols);
// Their bytes: nvfp4 4.5 bits per weight + 4 (the global scale); int4 4 +
// 16/128 bits + 16 (the shape); fp8 8 bits + one bf16 scale per row.
int64_t quantized_bytes(WeightFormat f, int64_t rows, int64_t cols);

// A projection weight a quantized export converts when its width allows
// (by Hub name; 2-D tensors only).
bool is_quantized_projection(const std::string& hub_name);
// The whole rule: a 2-D projection whose width is a multiple of the group.
bool is_quantized_weight(WeightFormat f, const std::string& hub_name, const std::vector<int64_t>& shape);

}  // namespace minipuzzle
