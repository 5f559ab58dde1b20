#include "minipuzzle/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/weight_format.h"
#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/moe_mixer.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle {
namespace fs = std::filesystem;

std::string hub_tensor_name(const std::string& file_name) {
  // transformers 5 saves the backbone as `model.`; the Hub layout says `backbone.`.
  if (file_name.rfind("model.", 0) == 0) return "backbone." + file_name.substr(6);
  return file_name;
}

bool is_fp8_projection(const std::string& hub_name) { return is_quantized_projection(hub_name); }

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

void load_weights(HybridLM& model, const CheckpointReader& reader) {
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& p : model->named_parameters()) {
    // transformers-5 fused expert tensors stand in for the Hub's per-expert ones.
    if (!reader.contains(p.key()) && read_fused_expert(reader, model->config(), p.key(), p.value(), used)) continue;
    reader.check(p.key(), p.value().sizes().vec());
    // Tensor by tensor into the model's own dtype and device: the largest
    // tensor is the most ever staged, never the model.
    reader.read_into(p.key(), p.value());
    used.insert(p.key());
  }
  reader.check_no_extra(used);
}

void load_weights(HybridLM& model, const CheckpointFiles& files, const std::string& source) {
  load_weights(model, CheckpointReader(files, source));
}

HybridLM load_model(const fs::path& dir, torch::ScalarType dtype, torch::Device device) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InputError(dir.string() + ": not a checkpoint directory");
  ModelConfig cfg = ModelConfig::load(dir);
  CheckpointReader reader = CheckpointReader::open(dir);
  HybridLM model(cfg, torch::TensorOptions().dtype(dtype).device(device));
  load_weights(model, reader);
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
      s.tensors.emplace_back(p.key(), p.value().detach().to(torch::kCPU, stored_dtype(p.key(), plain),
                                                            /*non_blocking=*/false, own_copy)
                                          .contiguous());
    }
  }
  s.config = saved_config(model->config(), dtype, widest);
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
