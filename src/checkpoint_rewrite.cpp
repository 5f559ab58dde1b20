#include "minipuzzle/checkpoint_rewrite.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <malloc.h>

#include <map>
#include <set>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace {

torch::Tensor index_tensor(const int64_t* begin, int64_t n) {
  return torch::from_blob(const_cast<int64_t*>(begin), {n}, torch::kInt64).clone();
}

// Names and shapes of a model of `config`, allocating nothing.
std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelConfig& config) {
  HybridLM meta(config, torch::TensorOptions().device(torch::kMeta));
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const auto& p : meta->named_parameters()) out.emplace_back(p.key(), p.value().sizes().vec());
  return out;
}

}  // namespace

std::vector<TensorRecipe> identity_recipes(const ModelConfig& config) {
  std::vector<TensorRecipe> out;
  for (auto& [name, shape] : parameter_shapes(config)) out.push_back({name, name, {}, {}, shape});
  return out;
}

torch::Tensor apply_recipe(const torch::Tensor& source, const TensorRecipe& r) {
  torch::Tensor t = source;
  if (!r.rows.empty()) t = t.index_select(0, index_tensor(r.rows.data(), r.rows.size()).to(t.device()));
  if (!r.cols.empty()) t = t.index_select(1, index_tensor(r.cols.data(), r.cols.size()).to(t.device()));
  return t;
}

ModelConfig saved_config(const ModelConfig& config, torch::ScalarType dtype, int64_t widest_fp8_input) {
  const bool fp8 = dtype == torch::kFloat8_e4m3fn;
  const torch::ScalarType plain = fp8 ? torch::kBFloat16 : dtype;
  ModelConfig cfg = config;
  cfg.extra["torch_dtype"] = plain == torch::kBFloat16 ? "bfloat16" : plain == torch::kFloat16 ? "float16" : "float32";
  cfg.extra.erase("dtype");
  cfg.extra.erase("quantization_config");  // describes the weights we read, not the ones we write
  if (fp8)
    cfg.extra["quantization_config"] = {
        {"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", "dynamic"},
        {"weight_block_size", nlohmann::json::array({1, std::max<int64_t>(widest_fp8_input, 1)})},
        {"modules_to_not_convert", nlohmann::json::array({"lm_head"})}};
  return cfg;
}

int64_t rewrite_checkpoint(const CheckpointReader& reader, const ModelConfig& source_config,
                           const ModelConfig& target, const std::vector<TensorRecipe>& recipes,
                           torch::ScalarType dtype, const fs::path& out, uint64_t max_shard_bytes) {
  torch::NoGradGuard no_grad;
  const bool fp8 = dtype == torch::kFloat8_e4m3fn;
  const torch::ScalarType plain = fp8 ? torch::kBFloat16 : dtype;
  if (plain != torch::kFloat32 && plain != torch::kBFloat16 && plain != torch::kFloat16)
    throw std::invalid_argument(std::string("rewrite_checkpoint: unsupported dtype ") + c10::toString(dtype));

  // Everything is checked before the first byte is written.
  std::set<std::string> used;
  for (const auto& [name, shape] : parameter_shapes(source_config)) {
    reader.check(name, shape);
    used.insert(name);
  }
  reader.check_no_extra(used);

  std::map<std::string, const TensorRecipe*> by_name;
  std::vector<TensorSpec> specs;
  int64_t widest = 0, params = 0;
  auto quantized = [&](const TensorRecipe& r) { return fp8 && r.shape.size() == 2 && is_fp8_projection(r.name); };
  for (const auto& r : recipes) {
    if (!used.count(r.source)) throw std::logic_error("rewrite_checkpoint: no source tensor " + r.source);
    by_name[r.name] = &r;
    int64_t n = 1;
    for (int64_t d : r.shape) n *= d;
    params += n;
    if (quantized(r)) {
      specs.push_back({r.name, DType::F8_E4M3, r.shape});
      specs.push_back({fp8_scale_name(r.name), DType::F32, {r.shape[0], 1}});
      widest = std::max(widest, r.shape[1]);
    } else {
      specs.push_back({r.name, from_torch_dtype(plain), r.shape});
    }
  }

  // The scales of an FP8 weight are computed with its values; the scale
  // tensor's name sorts right after the weight's, so it is written next.
  std::map<std::string, std::vector<torch::Tensor>> scales;
  auto produce = [&](const TensorSpec& spec, const WriteBytes& write) {
    auto s = scales.find(spec.name);
    if (s != scales.end()) {
      for (const auto& t : s->second) write(t.data_ptr(), t.numel() * t.element_size());
      scales.erase(s);
      return;
    }
    const TensorRecipe& r = *by_name.at(spec.name);
    const bool q = quantized(r);
    int64_t row_elements = 1;
    for (size_t d = 1; d < r.shape.size(); ++d) row_elements *= r.shape[d];
    const int64_t rows = r.shape.empty() ? 1 : r.shape[0];
    const int64_t chunk = std::max<int64_t>(1, kRewriteChunkElements / std::max<int64_t>(row_elements, 1));
    std::vector<torch::Tensor>* scale_parts = q ? &scales[fp8_scale_name(r.name)] : nullptr;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      // fp32 first so the output dtype rounds once, as save_model of a model
      // loaded in fp32 does.
      torch::Tensor t = r.rows.empty()
                            ? reader.read_rows(r.source, r0, n, torch::kFloat32)
                            : reader.read_rows(r.source, index_tensor(r.rows.data() + r0, n), torch::kFloat32);
      if (!r.cols.empty()) t = t.index_select(1, index_tensor(r.cols.data(), r.cols.size()));
      if (q) {
        Fp8Rows f = quantize_fp8_rows(t);
        write(f.values.data_ptr(), f.values.numel() * f.values.element_size());
        scale_parts->push_back(f.scale_inv);
      } else {
        t = t.to(plain).contiguous();
        write(t.data_ptr(), t.numel() * t.element_size());
      }
    }
    reader.release(r.source);
#ifdef __GLIBC__
    // Chunks of many sizes come and go; without a trim glibc keeps the freed
    // ones mapped and the process's memory creeps up with the tensor count
    // instead of staying at one chunk.
    malloc_trim(0);
#endif
  };

  AtomicDirectory dir(out);
  write_checkpoint_weights_streamed(dir.path(), std::move(specs), produce, max_shard_bytes);
  saved_config(target, dtype, widest).save(dir.path());
  dir.commit();
  return params;
}

}  // namespace minipuzzle
