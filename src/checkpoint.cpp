#include "minipuzzle/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle {
namespace fs = std::filesystem;

std::string hub_tensor_name(const std::string& file_name) {
  // transformers 5 saves the backbone as `model.`; the Hub layout says `backbone.`.
  if (file_name.rfind("model.", 0) == 0) return "backbone." + file_name.substr(6);
  return file_name;
}

namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64; }

// The fp32 weight of an F8_E4M3 tensor and its `weight_scale_inv`.
torch::Tensor load_fp8(const CheckpointFiles::Entry& entry, const std::string& name,
                       const std::map<std::string, const CheckpointFiles::Entry*>& by_hub_name, int64_t rank) {
  const TensorInfo& info = *entry.info;
  std::string file = entry.file->path().filename().string();
  if (rank != 2)
    throw InputError(fmt::format("{}: tensor {} is F8_E4M3, but only 2-D weights can be FP8", file, info.name));
  const std::string scale_name = fp8_scale_name(name);
  auto s = by_hub_name.find(scale_name);
  if (s == by_hub_name.end())
    throw InputError(fmt::format("{}: tensor {} is F8_E4M3 but its scale {} is missing", file, info.name, scale_name));
  const TensorInfo& si = *s->second->info;
  std::string sfile = s->second->file->path().filename().string();
  if (!is_float(si.dtype))
    throw InputError(fmt::format("{}: scale {} has dtype {}; expected F32, BF16 or F16", sfile, si.name,
                                 dtype_name(si.dtype)));
  if (si.shape.size() != 2 || si.shape[0] <= 0 || si.shape[1] <= 0 || info.shape[0] % si.shape[0] != 0 ||
      info.shape[1] % si.shape[1] != 0)
    throw InputError(fmt::format("{}: scale {} has shape [{}]; expected [{}, 1] (one per row) or a grid that "
                                 "divides [{}, {}]",
                                 sfile, si.name, fmt::join(si.shape, ", "), info.shape[0], info.shape[0],
                                 info.shape[1]));
  auto scale = tensor_view(s->second->file, si).to(torch::kFloat32);
  if (!torch::isfinite(scale).all().item<bool>() || (scale < 0).any().item<bool>())
    throw InputError(fmt::format("{}: scale {} holds negative or non-finite values", sfile, si.name));
  return dequantize_fp8(tensor_view(entry.file, info), scale);
}

}  // namespace

bool is_fp8_projection(const std::string& hub_name) {
  const std::string suffix = "_proj.weight";
  return hub_name.size() > suffix.size() && hub_name.compare(hub_name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string fp8_scale_name(const std::string& weight_name) { return weight_name + "_scale_inv"; }

Fp8Rows quantize_fp8_rows(const torch::Tensor& weight) {
  torch::NoGradGuard no_grad;
  if (weight.dim() != 2) throw std::invalid_argument("quantize_fp8_rows: expected a 2-D tensor");
  auto w = weight.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  if (!torch::isfinite(w).all().item<bool>())
    throw std::invalid_argument("quantize_fp8_rows: the tensor holds non-finite values");
  auto amax = w.abs().amax({1}, /*keepdim=*/true);
  auto scale = torch::where(amax > 0, amax / kFp8E4M3Max, torch::ones_like(amax));
  // torch's float -> e4m3fn conversion rounds to nearest even; it does not saturate, hence the clamp.
  auto values = (w / scale).clamp(-kFp8E4M3Max, kFp8E4M3Max).to(torch::kFloat8_e4m3fn);
  return {values, scale};
}

torch::Tensor dequantize_fp8(const torch::Tensor& values, const torch::Tensor& scale_inv) {
  if (values.dim() != 2 || scale_inv.dim() != 2 || scale_inv.size(0) <= 0 || scale_inv.size(1) <= 0 ||
      values.size(0) % scale_inv.size(0) != 0 || values.size(1) % scale_inv.size(1) != 0)
    throw std::invalid_argument("dequantize_fp8: the scale grid does not tile the weight");
  const int64_t rows = values.size(0), cols = values.size(1), R = scale_inv.size(0), C = scale_inv.size(1);
  auto v = values.to(torch::kFloat32).reshape({R, rows / R, C, cols / C});
  auto s = scale_inv.to(torch::kFloat32).reshape({R, 1, C, 1});
  return (v * s).reshape({rows, cols});
}

void load_weights(HybridLM& model, const CheckpointFiles& files, const std::string& source) {
  torch::NoGradGuard no_grad;
  std::map<std::string, const CheckpointFiles::Entry*> by_hub_name;
  for (const auto& name : files.names()) {
    std::string hub = hub_tensor_name(name);
    if (by_hub_name.count(hub))
      throw InputError(fmt::format("{}: tensor {} is present under two names", source, hub));
    by_hub_name[hub] = files.find(name);
  }
  std::set<std::string> used;
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    auto it = by_hub_name.find(name);
    if (it == by_hub_name.end())
      throw InputError(fmt::format("{}: tensor {} is missing (config.json describes it)", source, name));
    const auto& entry = *it->second;
    const TensorInfo& info = *entry.info;
    std::string file = entry.file->path().filename().string();
    if (info.shape != p.value().sizes().vec())
      throw InputError(fmt::format("{}: tensor {} has wrong shape: expected [{}], got [{}]", file, info.name,
                                   fmt::join(p.value().sizes(), ", "), fmt::join(info.shape, ", ")));
    used.insert(name);
    if (info.dtype == DType::F8_E4M3) {
      p.value().copy_(load_fp8(entry, name, by_hub_name, p.value().dim()));
      used.insert(fp8_scale_name(name));
      continue;
    }
    if (!is_float(info.dtype))
      throw InputError(fmt::format("{}: tensor {} has dtype {}; expected a float type (F32, BF16, F16, or F8_E4M3 "
                                   "with a weight_scale_inv)",
                                   file, info.name, dtype_name(info.dtype)));
    p.value().copy_(tensor_view(entry.file, info));
  }
  for (const auto& [hub, entry] : by_hub_name) {
    if (used.count(hub)) continue;
    if (hub.rfind("mtp.", 0) == 0) continue;  // multi-token-prediction heads: not part of the LM
    throw InputError(fmt::format("{}: unexpected tensor {} in {} (does config.json match the weights?)", source,
                                 entry->info->name, entry->file->path().filename().string()));
  }
}

HybridLM load_model(const fs::path& dir, torch::ScalarType dtype, torch::Device device) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": not a checkpoint directory");
  ModelConfig cfg = ModelConfig::load(dir);
  CheckpointFiles files = CheckpointFiles::open(dir);
  HybridLM model(cfg);
  load_weights(model, files, dir.string());
  model->to(device, dtype);
  model->eval();
  return model;
}

ModelSnapshot snapshot_model(HybridLM& model, torch::ScalarType dtype, bool own_copy) {
  torch::NoGradGuard no_grad;
  const bool fp8 = dtype == torch::kFloat8_e4m3fn;
  const torch::ScalarType plain = fp8 ? torch::kBFloat16 : dtype;  // dtype of the unquantized tensors
  if (plain != torch::kFloat32 && plain != torch::kBFloat16 && plain != torch::kFloat16)
    throw std::invalid_argument(std::string("save_model: unsupported dtype ") + c10::toString(dtype));
  ModelSnapshot s;
  int64_t widest = 0;
  for (auto& p : model->named_parameters()) {
    if (fp8 && p.value().dim() == 2 && is_fp8_projection(p.key())) {
      Fp8Rows q = quantize_fp8_rows(p.value());
      s.tensors.emplace_back(p.key(), q.values);
      s.tensors.emplace_back(fp8_scale_name(p.key()), q.scale_inv);
      widest = std::max(widest, p.value().size(1));
    } else {
      s.tensors.emplace_back(p.key(), p.value().detach().to(torch::kCPU, plain, /*non_blocking=*/false, own_copy)
                                          .contiguous());
    }
  }
  s.config = model->config();
  ModelConfig& cfg = s.config;
  cfg.extra["torch_dtype"] = plain == torch::kBFloat16 ? "bfloat16" : plain == torch::kFloat16 ? "float16" : "float32";
  cfg.extra.erase("dtype");
  cfg.extra.erase("quantization_config");  // describes the weights we read, not the ones we write
  if (fp8)
    cfg.extra["quantization_config"] = {{"quant_method", "fp8"},
                                        {"fmt", "e4m3"},
                                        {"activation_scheme", "dynamic"},
                                        {"weight_block_size", nlohmann::json::array({1, std::max<int64_t>(widest, 1)})},
                                        {"modules_to_not_convert", nlohmann::json::array({"lm_head"})}};
  return s;
}

void write_model_snapshot(const ModelSnapshot& snapshot, const fs::path& out_dir, uint64_t max_shard_bytes) {
  AtomicDirectory dir(out_dir);
  std::vector<TensorView> views;
  for (const auto& [name, t] : snapshot.tensors)
    views.push_back({name, from_torch_dtype(t.scalar_type()), t.sizes().vec(), t.data_ptr(),
                     static_cast<size_t>(t.numel()) * t.element_size()});
  write_checkpoint_weights(dir.path(), std::move(views), max_shard_bytes);
  snapshot.config.save(dir.path());
  dir.commit();
}

void save_model(HybridLM& model, const fs::path& out_dir, torch::ScalarType dtype, uint64_t max_shard_bytes) {
  write_model_snapshot(snapshot_model(model, dtype, /*own_copy=*/false), out_dir, max_shard_bytes);
}

}  // namespace minipuzzle
