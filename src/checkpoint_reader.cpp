#include "minipuzzle/checkpoint_reader.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/tensor_bridge.h"
#include "minipuzzle/weight_quantization.h"

namespace minipuzzle {

namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64; }

std::string file_of(const CheckpointFiles::Entry& e) { return e.file->path().filename().string(); }

// "X.weight" -> "X." (the module prefix of compressed-tensors' parts).
std::string module_of(const std::string& weight_name) {
  const std::string tail = "weight";
  if (weight_name.size() < tail.size() || weight_name.compare(weight_name.size() - tail.size(), tail.size(), tail) != 0)
    return "";
  return weight_name.substr(0, weight_name.size() - tail.size());
}

}  // namespace

// A weight stored in a compressed-tensors format (weight_quantization.h):
// nvfp4 / int4 by their `weight_packed`, fp8 channel by an F8_E4M3 weight
// with `weight_scale` (FineGrainedFP8 uses `weight_scale_inv`).
std::optional<WeightFormat> CheckpointReader::compressed_format(const std::string& hub_name) const {
  const std::string m = module_of(hub_name);
  if (m.empty() || hub_name.size() != m.size() + 6) return std::nullopt;
  auto p = by_hub_.find(m + "weight_packed");
  if (p != by_hub_.end()) {
    if (p->second->info->dtype == DType::U8) return WeightFormat::kNvfp4;
    if (p->second->info->dtype == DType::I32) return WeightFormat::kInt4Group128;
    throw InputError(fmt::format("{}: tensor {} has dtype {}; expected U8 (nvfp4) or I32 (int4)", file_of(*p->second),
                                 p->second->info->name, dtype_name(p->second->info->dtype)));
  }
  auto w = by_hub_.find(hub_name);
  if (w != by_hub_.end() && w->second->info->dtype == DType::F8_E4M3 && !by_hub_.count(fp8_scale_name(hub_name)) &&
      by_hub_.count(m + "weight_scale"))
    return WeightFormat::kFp8Channel;
  return std::nullopt;
}

const CheckpointFiles::Entry& CheckpointReader::part(const std::string& hub_name, const std::string& suffix) const {
  return entry(module_of(hub_name) + suffix);
}

void CheckpointReader::check_compressed(const std::string& hub_name, WeightFormat f,
                                        const std::vector<int64_t>& shape) const {
  if (shape.size() != 2 || shape[1] % weight_format_group(f) != 0)
    throw InputError(fmt::format("{}: tensor {} is stored {} but has shape [{}]; {} needs 2-D weights whose width "
                                 "is a multiple of {}",
                                 source_, hub_name, weight_format_name(f), fmt::join(shape, ", "),
                                 weight_format_name(f), weight_format_group(f)));
  for (const auto& p : quantized_parts(f, shape[0], shape[1])) {
    const auto& e = part(hub_name, p.suffix);
    if (e.info->shape != p.shape || e.info->dtype != p.dtype)
      throw InputError(fmt::format("{}: tensor {} is {} [{}]; {} of a [{}, {}] weight is {} [{}]", file_of(e),
                                   e.info->name, dtype_name(e.info->dtype), fmt::join(e.info->shape, ", "),
                                   weight_format_name(f), shape[0], shape[1], dtype_name(p.dtype),
                                   fmt::join(p.shape, ", ")));
  }
}

CheckpointReader::CheckpointReader(CheckpointFiles files, std::string source)
    : files_(std::move(files)), source_(std::move(source)) {
  for (const auto& name : files_.names()) {
    const std::string hub = hub_tensor_name(name);
    if (by_hub_.count(hub)) throw InputError(fmt::format("{}: tensor {} is present under two names", source_, hub));
    by_hub_[hub] = files_.find(name);
  }
}

CheckpointReader CheckpointReader::open(const std::filesystem::path& dir) {
  return CheckpointReader(CheckpointFiles::open(dir), dir.string());
}

const CheckpointFiles::Entry& CheckpointReader::entry(const std::string& hub_name) const {
  auto it = by_hub_.find(hub_name);
  if (it == by_hub_.end())
    throw InputError(fmt::format("{}: tensor {} is missing (config.json describes it)", source_, hub_name));
  return *it->second;
}

void CheckpointReader::check(const std::string& hub_name, const std::vector<int64_t>& shape) const {
  if (auto f = compressed_format(hub_name)) return check_compressed(hub_name, *f, shape);
  const auto& e = entry(hub_name);
  const TensorInfo& info = *e.info;
  if (info.shape != shape)
    throw InputError(fmt::format("{}: tensor {} has wrong shape: expected [{}], got [{}]", file_of(e), info.name,
                                 fmt::join(shape, ", "), fmt::join(info.shape, ", ")));
  if (info.dtype == DType::F8_E4M3) {
    if (shape.size() != 2)
      throw InputError(
          fmt::format("{}: tensor {} is F8_E4M3, but only 2-D weights can be FP8", file_of(e), info.name));
    const std::string scale_name = fp8_scale_name(hub_name);
    auto s = by_hub_.find(scale_name);
    if (s == by_hub_.end())
      throw InputError(
          fmt::format("{}: tensor {} is F8_E4M3 but its scale {} is missing", file_of(e), info.name, scale_name));
    const TensorInfo& si = *s->second->info;
    if (!is_float(si.dtype))
      throw InputError(fmt::format("{}: scale {} has dtype {}; expected F32, BF16 or F16", file_of(*s->second),
                                   si.name, dtype_name(si.dtype)));
    if (si.shape.size() != 2 || si.shape[0] <= 0 || si.shape[1] <= 0 || info.shape[0] % si.shape[0] != 0 ||
        info.shape[1] % si.shape[1] != 0)
      throw InputError(fmt::format("{}: scale {} has shape [{}]; expected [{}, 1] (one per row) or a grid that "
                                   "divides [{}, {}]",
                                   file_of(*s->second), si.name, fmt::join(si.shape, ", "), info.shape[0],
                                   info.shape[0], info.shape[1]));
    return;
  }
  if (!is_float(info.dtype))
    throw InputError(fmt::format("{}: tensor {} has dtype {}; expected a float type (F32, BF16, F16, or F8_E4M3 "
                                 "with a weight_scale_inv)",
                                 file_of(e), info.name, dtype_name(info.dtype)));
}

torch::Tensor CheckpointReader::source_tensor(const std::string& hub_name, const torch::Tensor& rows) const {
  if (auto f = compressed_format(hub_name)) {
    // W' exactly as compressed-tensors decompresses it (bf16), then fp32.
    auto view_of = [&](const std::string& suffix) {
      const auto& e = part(hub_name, suffix);
      e.file->check_intact();
      return tensor_view(e.file, *e.info);
    };
    torch::Tensor values = view_of(*f == WeightFormat::kFp8Channel ? "weight" : "weight_packed");
    torch::Tensor scale = view_of("weight_scale");
    torch::Tensor gs = *f == WeightFormat::kNvfp4 ? view_of("weight_global_scale").to(torch::kFloat32) : torch::Tensor();
    if (*f == WeightFormat::kInt4Group128) {
      auto shp = view_of("weight_shape");
      if (shp[0].item<int64_t>() != values.size(0) || shp[1].item<int64_t>() != values.size(1) * 8)
        throw InputError(fmt::format("{}: {}weight_shape does not match its packed weight", source_,
                                     module_of(hub_name)));
    }
    if (!torch::isfinite(scale.to(torch::kFloat32)).all().item<bool>() ||
        (gs.defined() && !torch::isfinite(gs).all().item<bool>()))
      throw InputError(fmt::format("{}: the scales of {} hold non-finite values", source_, hub_name));
    if (rows.defined()) {
      values = values.index_select(0, rows);
      scale = scale.index_select(0, rows);
    }
    return dequantize_rows(*f, values.contiguous(), scale.contiguous(), gs).to(torch::kFloat32);
  }
  const auto& e = entry(hub_name);
  e.file->check_intact();
  auto view = tensor_view(e.file, *e.info);
  if (e.info->dtype != DType::F8_E4M3) return rows.defined() ? view.index_select(0, rows) : view;
  check(hub_name, e.info->shape);
  const auto& s = *by_hub_.at(fp8_scale_name(hub_name));
  s.file->check_intact();
  auto scale = tensor_view(s.file, *s.info).to(torch::kFloat32);
  if (!torch::isfinite(scale).all().item<bool>() || (scale < 0).any().item<bool>())
    throw InputError(fmt::format("{}: scale {} holds negative or non-finite values", file_of(s), s.info->name));
  if (!rows.defined()) return dequantize_fp8(view, scale);
  // Only the asked rows, each times its own scale row: the same fp32
  // products as dequantizing the whole tensor.
  const int64_t n = rows.size(0), cols = view.size(1), C = scale.size(1);
  auto v = view.index_select(0, rows).to(torch::kFloat32).reshape({n, C, cols / C});
  auto sr = scale.index_select(0, torch::div(rows, view.size(0) / scale.size(0), "floor")).reshape({n, C, 1});
  return (v * sr).reshape({n, cols});
}

bool CheckpointReader::copy_in_pieces(const std::string& hub_name, const torch::Tensor& src, torch::Tensor& out) const {
  if (!in_pieces(hub_name, src, out.device())) return false;
  // A large tensor (an 8B model's embedding is 1 GiB) copied a piece of
  // rows at a time, each piece's file pages released once it is copied: at
  // the peak of a load the process holds the weights read so far and one
  // piece of file pages, not the whole tensor twice. The same element-wise
  // conversion, so the same values.
  const auto& e = entry(hub_name);
  const int64_t row_bytes = static_cast<int64_t>(src.nbytes()) / src.size(0);
  const int64_t rows = std::max<int64_t>(1, piece_bytes_ / std::max<int64_t>(row_bytes, 1));
  for (int64_t r0 = 0; r0 < src.size(0); r0 += rows) {
    const int64_t n = std::min(rows, src.size(0) - r0);
    out.narrow(0, r0, n).copy_(src.narrow(0, r0, n));
    e.file->release_pages(*e.info, static_cast<uint64_t>(r0 * row_bytes), static_cast<uint64_t>((r0 + n) * row_bytes));
  }
  return true;
}

bool CheckpointReader::in_pieces(const std::string& hub_name, const torch::Tensor& src, const torch::Device& to) const {
  return to.is_cpu() && src.dim() >= 1 && src.size(0) >= 2 && static_cast<int64_t>(src.nbytes()) > 2 * piece_bytes_ &&
         !compressed_format(hub_name) && entry(hub_name).info->dtype != DType::F8_E4M3;
}

torch::Tensor CheckpointReader::read(const std::string& hub_name, torch::ScalarType dtype,
                                     torch::Device device) const {
  torch::NoGradGuard no_grad;
  auto src = source_tensor(hub_name, {});
  if (in_pieces(hub_name, src, device)) {
    auto out = torch::empty(src.sizes(), src.options().dtype(dtype));
    copy_in_pieces(hub_name, src, out);
    release(hub_name);
    return out;
  }
  // copy=true: a tensor already in `dtype` on the CPU would otherwise come
  // back as the read-only view of the mapping.
  auto out = src.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
  release(hub_name);
  return out;
}

void CheckpointReader::read_into(const std::string& hub_name, torch::Tensor& out) const {
  torch::NoGradGuard no_grad;
  auto src = source_tensor(hub_name, {});
  if (!copy_in_pieces(hub_name, src, out)) out.copy_(src);
  release(hub_name);
}

torch::Tensor CheckpointReader::read_rows(const std::string& hub_name, int64_t first, int64_t count,
                                          torch::ScalarType dtype) const {
  torch::NoGradGuard no_grad;
  if (compressed_format(hub_name) || entry(hub_name).info->dtype == DType::F8_E4M3)
    return source_tensor(hub_name, torch::arange(first, first + count, torch::kInt64)).to(dtype);
  return source_tensor(hub_name, {}).narrow(0, first, count).to(torch::kCPU, dtype, false, /*copy=*/true);
}

torch::Tensor CheckpointReader::read_rows(const std::string& hub_name, const torch::Tensor& rows,
                                          torch::ScalarType dtype) const {
  torch::NoGradGuard no_grad;
  return source_tensor(hub_name, rows).to(dtype);
}

void CheckpointReader::release(const std::string& hub_name) const {
  if (auto f = compressed_format(hub_name)) {
    for (const auto& p : quantized_parts(*f, 0, 0)) {
      const auto& e = part(hub_name, p.suffix);
      e.file->release_pages(*e.info);
    }
    return;
  }
  const auto& e = entry(hub_name);
  e.file->release_pages(*e.info);
  if (e.info->dtype == DType::F8_E4M3) {
    auto s = by_hub_.find(fp8_scale_name(hub_name));
    if (s != by_hub_.end()) s->second->file->release_pages(*s->second->info);
  }
}

void CheckpointReader::check_no_extra(const std::set<std::string>& used) const {
  for (const auto& [hub, e] : by_hub_) {
    if (used.count(hub)) continue;
    if (hub.rfind("mtp.", 0) == 0) continue;  // multi-token-prediction heads: not part of the LM
    // compressed-tensors parts of a used weight
    bool is_part = false;
    for (const char* suffix : {"weight_packed", "weight_scale", "weight_global_scale", "weight_shape"}) {
      const std::string tail = suffix;
      if (hub.size() > tail.size() && hub.compare(hub.size() - tail.size(), tail.size(), tail) == 0) {
        const std::string weight = hub.substr(0, hub.size() - tail.size()) + "weight";
        if (used.count(weight) && compressed_format(weight)) is_part = true;
      }
    }
    if (is_part) continue;
    const std::string scale_suffix = "_scale_inv";
    if (hub.size() > scale_suffix.size() &&
        hub.compare(hub.size() - scale_suffix.size(), scale_suffix.size(), scale_suffix) == 0) {
      const std::string weight = hub.substr(0, hub.size() - scale_suffix.size());
      auto w = by_hub_.find(weight);
      if (used.count(weight) && w != by_hub_.end() && w->second->info->dtype == DType::F8_E4M3) continue;
    }
    throw InputError(fmt::format("{}: unexpected tensor {} in {} (does config.json match the weights?)", source_,
                                 e->info->name, file_of(*e)));
  }
}

uint64_t CheckpointReader::total_bytes() const {
  uint64_t n = 0;
  for (const auto& [hub, e] : by_hub_) n += e->info->nbytes();
  return n;
}

}  // namespace minipuzzle
