#include "minipuzzle/checkpoint_rewrite.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <malloc.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
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

// The MoE router's score-correction bias stays fp32 in every export, as
// transformers keeps it (its routing choices are sensitive to the bias's
// low bits).
torch::ScalarType stored_dtype(const std::string& name, torch::ScalarType plain) {
  static const std::string bias = "e_score_correction_bias";
  const bool router_bias = name.size() >= bias.size() && name.compare(name.size() - bias.size(), bias.size(), bias) == 0;
  return router_bias ? torch::kFloat32 : plain;
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

double QuantizationReport::mean_relative_error() const {
  if (quantized.empty()) return 0;
  double sum = 0;
  for (const auto& q : quantized) sum += q.relative_error;
  return sum / static_cast<double>(quantized.size());
}

const QuantizedTensorError* QuantizationReport::worst() const {
  const QuantizedTensorError* w = nullptr;
  for (const auto& q : quantized)
    if (!w || q.relative_error > w->relative_error) w = &q;
  return w;
}

nlohmann::json QuantizationReport::to_json() const {
  nlohmann::json j;
  j["format"] = weight_format_name(format);
  j["compressed_tensors_format"] = compressed_tensors_format(format);
  j["dequantized"] = dequantized;
  j["error"] = "relative Frobenius error ||W' - W|| / ||W||, W as read in fp32, W' dequantized";
  j["tensors"] = nlohmann::json::array();
  for (const auto& q : quantized)
    j["tensors"].push_back({{"name", q.name}, {"shape", q.shape}, {"relative_error", q.relative_error}});
  j["kept_bf16"] = nlohmann::json::array();
  for (const auto& [name, why] : kept_bf16) j["kept_bf16"].push_back({{"name", name}, {"reason", why}});
  j["mean_relative_error"] = mean_relative_error();
  if (const auto* w = worst()) j["worst"] = {{"name", w->name}, {"relative_error", w->relative_error}};
  return j;
}

namespace {

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string(".^$*+?()[]{}|\\").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// "backbone.layers.3.mixer.down_proj.weight" -> "layers.3.mixer.down_proj"
std::string module_tail(const std::string& weight_name) {
  std::string m = weight_name.substr(0, weight_name.size() - std::string(".weight").size());
  const auto layers = m.find("layers.");
  return layers == std::string::npos ? m : m.substr(layers);
}

}  // namespace

nlohmann::json compressed_tensors_config(WeightFormat f, const std::vector<std::string>& kept_bf16) {
  nlohmann::json weights;
  switch (f) {
    case WeightFormat::kFp8Channel:
      weights = {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"group_size", nullptr},
                 {"strategy", "channel"}, {"dynamic", false}};
      break;
    case WeightFormat::kNvfp4:
      weights = {{"num_bits", 4},          {"type", "float"},  {"symmetric", true},
                 {"group_size", 16},       {"strategy", "tensor_group"}, {"dynamic", false},
                 {"scale_dtype", "torch.float8_e4m3fn"}};
      break;
    case WeightFormat::kInt4Group128:
      weights = {{"num_bits", 4},   {"type", "int"},      {"symmetric", true},
                 {"group_size", 128}, {"strategy", "group"}, {"dynamic", false}};
      break;
  }
  const std::string format = compressed_tensors_format(f);
  nlohmann::json ignore = {"lm_head", "re:.*embeddings$", "re:.*norm(_f)?$", "re:.*conv1d$"};
  for (const auto& name : kept_bf16) ignore.push_back("re:.*" + regex_escape(module_tail(name)) + "$");
  return {{"quant_method", "compressed-tensors"},
          {"format", format},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}},
              {"weights", weights},
              {"input_activations", nullptr},
              {"output_activations", nullptr},
              {"format", format}}}}},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr}};
}

int64_t rewrite_checkpoint(const CheckpointReader& reader, const ModelConfig& source_config,
                           const ModelConfig& target, const std::vector<TensorRecipe>& recipes,
                           torch::ScalarType dtype, const fs::path& out, uint64_t max_shard_bytes,
                           const RewriteOptions& options) {
  torch::NoGradGuard no_grad;
  const bool fp8 = dtype == torch::kFloat8_e4m3fn;
  const torch::ScalarType plain = fp8 ? torch::kBFloat16 : dtype;
  if (plain != torch::kFloat32 && plain != torch::kBFloat16 && plain != torch::kFloat16)
    throw std::invalid_argument(std::string("rewrite_checkpoint: unsupported dtype ") + c10::toString(dtype));
  const std::optional<WeightFormat> ct = options.quantize;
  if (ct && dtype != torch::kBFloat16)
    throw std::invalid_argument("rewrite_checkpoint: compressed-tensors exports keep the rest of the model in bf16");

  // Everything is checked before the first byte is written.
  std::set<std::string> used;
  for (const auto& [name, shape] : parameter_shapes(source_config)) {
    reader.check(name, shape);
    used.insert(name);
  }
  reader.check_no_extra(used);

  QuantizationReport local_report;
  QuantizationReport& report = options.report ? *options.report : local_report;
  report = QuantizationReport{};
  if (ct) {
    report.format = *ct;
    report.dequantized = options.dequantized;
  }

  // A compressed-tensors weight: which recipe, which of its stored tensors.
  struct Part {
    const TensorRecipe* recipe;
    std::string suffix;  // "" = the whole weight (plain, or dequantized W')
  };
  struct QuantState {
    torch::Tensor global_scale;
    std::vector<torch::Tensor> scales;
  };
  std::map<std::string, Part> parts;
  std::map<std::string, QuantState> qstate;  // by recipe name
  std::vector<std::string> kept_bf16;

  std::map<std::string, const TensorRecipe*> by_name;
  std::vector<TensorSpec> specs;
  int64_t widest = 0, params = 0;
  auto quantized = [&](const TensorRecipe& r) { return fp8 && r.shape.size() == 2 && is_fp8_projection(r.name); };
  auto ct_quantized = [&](const TensorRecipe& r) {
    return ct && is_quantized_weight(*ct, r.name, r.shape);
  };
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
    } else if (ct_quantized(r) && !options.dequantized) {
      const std::string module = r.name.substr(0, r.name.size() - std::string("weight").size());
      for (const auto& p : quantized_parts(*ct, r.shape[0], r.shape[1])) {
        specs.push_back({module + p.suffix, p.dtype, p.shape});
        parts[module + p.suffix] = {&r, p.suffix};
      }
    } else {
      specs.push_back({r.name, from_torch_dtype(stored_dtype(r.name, plain)), r.shape});
      if (ct && r.shape.size() == 2 && is_fp8_projection(r.name) && !ct_quantized(r)) {
        kept_bf16.push_back(r.name);
        report.kept_bf16.emplace_back(
            r.name, fmt::format("{} columns are not a multiple of {}", r.shape[1], weight_format_group(*ct)));
      }
    }
  }

  // Reads a recipe's rows in fp32 a chunk at a time.
  auto for_each_chunk = [&](const TensorRecipe& r, const std::function<void(const torch::Tensor&)>& fn) {
    int64_t row_elements = 1;
    for (size_t d = 1; d < r.shape.size(); ++d) row_elements *= r.shape[d];
    const int64_t rows = r.shape.empty() ? 1 : r.shape[0];
    const int64_t chunk = std::max<int64_t>(1, kRewriteChunkElements / std::max<int64_t>(row_elements, 1));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      // fp32 first so the output dtype rounds once, as save_model of a model
      // loaded in fp32 does.
      torch::Tensor t = r.rows.empty()
                            ? reader.read_rows(r.source, r0, n, torch::kFloat32)
                            : reader.read_rows(r.source, index_tensor(r.rows.data() + r0, n), torch::kFloat32);
      if (!r.cols.empty()) t = t.index_select(1, index_tensor(r.cols.data(), r.cols.size()));
      fn(t);
    }
  };
  auto write_tensor = [](const WriteBytes& write, const torch::Tensor& t) {
    torch::Tensor c = t.contiguous();
    write(c.data_ptr(), c.numel() * c.element_size());
  };
  // nvfp4's global scale needs the whole tensor's max: one pass before the
  // values (it is also the first of the weight's tensors in name order).
  auto global_scale = [&](const TensorRecipe& r) -> torch::Tensor {
    if (*ct != WeightFormat::kNvfp4) return {};
    QuantState& st = qstate[r.name];
    if (!st.global_scale.defined()) {
      double amax = 0;
      for_each_chunk(r, [&](const torch::Tensor& t) { amax = std::max(amax, t.abs().max().item<double>()); });
      st.global_scale = nvfp4_global_scale(amax);
    }
    return st.global_scale;
  };
  // Quantizes a weight chunk by chunk; writes the stored values (or W' when
  // dequantized), keeps the scales for their own tensor, records the error.
  auto quantize_weight = [&](const TensorRecipe& r, const WriteBytes& write) {
    const torch::Tensor gs = global_scale(r);
    QuantState& st = qstate[r.name];
    double err2 = 0, norm2 = 0;
    for_each_chunk(r, [&](const torch::Tensor& t) {
      QuantizedRows q;
      try {
        q = quantize_rows(*ct, t, gs);
      } catch (const std::invalid_argument& e) {
        throw InputError(r.source + ": " + e.what());
      }
      err2 += (q.dequantized.to(torch::kFloat32) - t).pow(2).sum().item<double>();
      norm2 += t.pow(2).sum().item<double>();
      write_tensor(write, options.dequantized ? q.dequantized : q.values);
      if (!options.dequantized) st.scales.push_back(q.scale);
    });
    report.quantized.push_back({r.name, r.shape, norm2 > 0 ? std::sqrt(err2 / norm2) : 0.0});
  };

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
    auto part = parts.find(spec.name);
    if (part != parts.end()) {
      const TensorRecipe& r = *part->second.recipe;
      const std::string& suffix = part->second.suffix;
      if (suffix == "weight_global_scale") {
        write_tensor(write, global_scale(r));
      } else if (suffix == "weight" || suffix == "weight_packed") {
        quantize_weight(r, write);
      } else if (suffix == "weight_scale") {
        // Name order puts weight / weight_packed before weight_scale.
        QuantState& st = qstate.at(r.name);
        for (const auto& t : st.scales) write_tensor(write, t);
        qstate.erase(r.name);
      } else if (suffix == "weight_shape") {
        write_tensor(write, torch::tensor({r.shape[0], r.shape[1]}, torch::kInt64));
      } else {
        throw std::logic_error("rewrite_checkpoint: unknown quantized tensor " + spec.name);
      }
      reader.release(r.source);
      return;
    }
    const TensorRecipe& r = *by_name.at(spec.name);
    if (ct_quantized(r)) {  // dequantized: W' in bf16 under the weight's own name
      quantize_weight(r, write);
      reader.release(r.source);
      qstate.erase(r.name);
      return;
    }
    const bool q = quantized(r);
    std::vector<torch::Tensor>* scale_parts = q ? &scales[fp8_scale_name(r.name)] : nullptr;
    for_each_chunk(r, [&](const torch::Tensor& chunk) {
      if (q) {
        Fp8Rows f = quantize_fp8_rows(chunk);
        write(f.values.data_ptr(), f.values.numel() * f.values.element_size());
        scale_parts->push_back(f.scale_inv);
      } else {
        write_tensor(write, chunk.to(stored_dtype(r.name, plain)));
      }
    });
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
  ModelConfig cfg = saved_config(target, dtype, widest);
  if (ct && !options.dequantized) cfg.extra["quantization_config"] = compressed_tensors_config(*ct, kept_bf16);
  cfg.save(dir.path());
  if (ct) {
    std::ofstream f(dir.path() / "quantization_report.json");
    f << report.to_json().dump(2) << "\n";
    if (!f) throw std::runtime_error("cannot write " + (dir.path() / "quantization_report.json").string());
  }
  if (options.add_files) options.add_files(dir.path());
  dir.commit();
  return params;
}

}  // namespace minipuzzle
