#include "minipuzzle/weight_format.h"

namespace minipuzzle {

std::optional<WeightFormat> weight_format_from_name(const std::string& name) {
  if (name == "fp8") return WeightFormat::kFp8Channel;
  if (name == "nvfp4") return WeightFormat::kNvfp4;
  if (name == "int4") return WeightFormat::kInt4Group128;
  return std::nullopt;
}

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kFp8Channel: return "fp8";
    case WeightFormat::kNvfp4: return "nvfp4";
    case WeightFormat::kInt4Group128: return "int4";
  }
  return "?";
}

const char* compressed_tensors_format(WeightFormat f) {
  switch (f) {
    case WeightFormat::kFp8Channel: return "float-quantized";
    case WeightFormat::kNvfp4: return "nvfp4-pack-quantized";
    case WeightFormat::kInt4Group128: return "pack-quantized";
  }
  return "?";
}

int64_t weight_format_group(WeightFormat f) {
  switch (f) {
    case WeightFormat::kFp8Channel: return 1;
    case WeightFormat::kNvfp4: return 16;
    case WeightFormat::kInt4Group128: return 128;
  }
  return 1;
}

std::vector<QuantizedPart> quantized_parts(WeightFormat f, int64_t rows, int64_t cols) {
  switch (f) {
    case WeightFormat::kFp8Channel:
      return {{"weight", DType::F8_E4M3, {rows, cols}}, {"weight_scale", DType::BF16, {rows, 1}}};
    case WeightFormat::kNvfp4:
      return {{"weight_global_scale", DType::F32, {1}},
              {"weight_packed", DType::U8, {rows, cols / 2}},
              {"weight_scale", DType::F8_E4M3, {rows, cols / 16}}};
    case WeightFormat::kInt4Group128:
      return {{"weight_packed", DType::I32, {rows, cols / 8}},
              {"weight_scale", DType::BF16, {rows, cols / 128}},
              {"weight_shape", DType::I64, {2}}};
  }
  return {};
}

int64_t quantized_bytes(WeightFormat f, int64_t rows, int64_t cols) {
  int64_t bytes = 0;
  for (const QuantizedPart& p : quantized_parts(f, rows, cols)) {
    int64_t n = static_cast<int64_t>(dtype_size(p.dtype));
    for (int64_t d : p.shape) n *= d;
    bytes += n;
  }
  return bytes;
}

bool is_quantized_projection(const std::string& hub_name) {
  const std::string suffix = "_proj.weight";
  return hub_name.size() > suffix.size() && hub_name.compare(hub_name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_quantized_weight(WeightFormat f, const std::string& hub_name, const std::vector<int64_t>& shape) {
  return shape.size() == 2 && is_quantized_projection(hub_name) && shape[1] % weight_format_group(f) == 0;
}

}  // namespace minipuzzle
