#include "minipuzzle/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <set>

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
    if (info.dtype != DType::F32 && info.dtype != DType::BF16 && info.dtype != DType::F16 && info.dtype != DType::F64)
      throw InputError(fmt::format("{}: tensor {} has dtype {}; expected a float type (F32, BF16, F16)", file,
                                   info.name, dtype_name(info.dtype)));
    p.value().copy_(tensor_view(entry.file, info));
    used.insert(name);
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

void save_model(HybridLM& model, const fs::path& out_dir, torch::ScalarType dtype, uint64_t max_shard_bytes) {
  torch::NoGradGuard no_grad;
  AtomicDirectory dir(out_dir);
  std::vector<torch::Tensor> keep;
  std::vector<TensorView> views;
  for (auto& p : model->named_parameters()) {
    auto t = p.value().detach().to(torch::kCPU, dtype).contiguous();
    keep.push_back(t);
    views.push_back({p.key(), from_torch_dtype(dtype), t.sizes().vec(), t.data_ptr(),
                     static_cast<size_t>(t.numel()) * t.element_size()});
  }
  write_checkpoint_weights(dir.path(), std::move(views), max_shard_bytes);
  ModelConfig cfg = model->config();
  cfg.extra["torch_dtype"] = dtype == torch::kBFloat16 ? "bfloat16" : dtype == torch::kFloat16 ? "float16" : "float32";
  cfg.extra.erase("dtype");
  cfg.save(dir.path());
  dir.commit();
}

}  // namespace minipuzzle
