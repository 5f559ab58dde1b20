#include "minipuzzle/adamw.h"

#include <fmt/format.h>

#include <cmath>

#include "minipuzzle/errors.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle {

bool AdamW::decays(const std::string& name, const torch::Tensor& p) {
  if (p.dim() < 2) return false;  // norms, biases, A_log, D, dt_bias
  return name.find("conv1d") == std::string::npos;
}

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, AdamWOptions options)
    : opt_(options) {
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : named_params) {
    Slot s;
    s.name = name;
    s.param = p;
    s.master = p.scalar_type() == torch::kFloat32 ? p : p.detach().to(torch::kFloat32).clone();
    s.exp_avg = torch::zeros_like(s.master);
    s.exp_avg_sq = torch::zeros_like(s.master);
    s.decay = decays(name, p);
    slots_.push_back(std::move(s));
  }
}

double AdamW::grad_norm() const {
  double sq = 0;
  for (const auto& s : slots_)
    if (s.param.grad().defined()) sq += s.param.grad().to(torch::kFloat32).square().sum().item<double>();
  return std::sqrt(sq);
}

double AdamW::clip_grad_norm(double max_norm) {
  const double norm = grad_norm();
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    torch::NoGradGuard no_grad;
    for (auto& s : slots_)
      if (s.param.grad().defined()) s.param.mutable_grad().mul_(scale);
  }
  return norm;
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(step_));
  for (auto& s : slots_) {
    if (!s.param.grad().defined()) continue;
    auto g = s.param.grad().to(torch::kFloat32);
    s.exp_avg.mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    s.exp_avg_sq.mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    if (s.decay && opt_.weight_decay > 0) s.master.mul_(1.0 - lr * opt_.weight_decay);
    auto denom = (s.exp_avg_sq / bc2).sqrt_().add_(opt_.eps);
    s.master.addcdiv_(s.exp_avg, denom, -lr / bc1);
    if (!s.master.is_same(s.param)) s.param.copy_(s.master);
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_)
    if (s.param.grad().defined()) s.param.mutable_grad().zero_();
}

void AdamW::save(const std::filesystem::path& file) const {
  std::vector<torch::Tensor> keep;  // CPU copies alive until the write
  std::vector<TensorView> views;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    keep.push_back(c);
    views.push_back({name, DType::F32, c.sizes().vec(), c.data_ptr(), static_cast<std::size_t>(c.nbytes())});
  };
  for (const auto& s : slots_) {
    add(s.name + ".exp_avg", s.exp_avg);
    add(s.name + ".exp_avg_sq", s.exp_avg_sq);
    if (!s.master.is_same(s.param)) add(s.name + ".master", s.master);
  }
  write_safetensors(file, views, {{"format", "minipuzzle-adamw"}, {"step", std::to_string(step_)}});
}

void AdamW::load(const std::filesystem::path& file) {
  auto f = SafetensorsFile::open(file);
  auto meta = f->metadata();
  if (meta["format"] != "minipuzzle-adamw")
    throw InputError(fmt::format("{}: not an optimizer state file", file.string()));
  int64_t step = 0;
  try {
    step = std::stoll(meta["step"]);
  } catch (...) {
    throw InputError(fmt::format("{}: bad 'step' in metadata", file.string()));
  }
  torch::NoGradGuard no_grad;
  auto read = [&](const std::string& name, torch::Tensor& into) {
    const TensorInfo* t = f->find(name);
    if (!t || t->dtype != DType::F32 || t->shape != into.sizes().vec())
      throw InputError(fmt::format("{}: tensor {} missing or of the wrong shape (optimizer state of another model?)",
                                   file.string(), name));
    into.copy_(tensor_view(f, *t));
  };
  std::size_t expected = 0;
  for (auto& s : slots_) {
    read(s.name + ".exp_avg", s.exp_avg);
    read(s.name + ".exp_avg_sq", s.exp_avg_sq);
    expected += 2;
    if (!s.master.is_same(s.param)) {
      // Saved from an fp32 run, resumed in bf16: the fp32 weights were loaded
      // into the model and the constructor's master copy holds them exactly.
      if (f->find(s.name + ".master")) {
        read(s.name + ".master", s.master);
        ++expected;
      }
    } else if (f->find(s.name + ".master")) {
      // Saved from a bf16 run, resumed in fp32: the master is the better copy.
      auto m = tensor_view(f, *f->find(s.name + ".master"));
      s.master.copy_(m);
      ++expected;
    }
  }
  if (expected != f->tensors().size())
    throw InputError(fmt::format("{}: holds {} tensors, expected {} (optimizer state of another model?)",
                                 file.string(), f->tensors().size(), expected));
  step_ = step;
}

}  // namespace minipuzzle
