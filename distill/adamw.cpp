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

namespace {

// fp32 parameters are their own master; others get an fp32 copy.
AdamWTensors optimizer_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& named_params) {
  torch::NoGradGuard no_grad;
  AdamWTensors t;
  for (const auto& [name, p] : named_params) {
    t.params.push_back(p);
    t.masters.push_back(p.scalar_type() == torch::kFloat32 ? p : p.detach().to(torch::kFloat32).clone());
    t.exp_avgs.push_back(torch::zeros_like(t.masters.back()));
    t.exp_avg_sqs.push_back(torch::zeros_like(t.masters.back()));
    t.decay.push_back(AdamW::decays(name, p));
  }
  return t;
}

}  // namespace

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, AdamWOptions options)
    : opt_(options), update_(optimizer_tensors(named_params)) {
  for (const auto& np : named_params) names_.push_back(np.first);
}

double AdamW::grad_norm() { return std::sqrt(update_.grad_sum_of_squares()); }

torch::Tensor AdamW::clip_grad_norm_on_device(double max_norm) {
  torch::Tensor sum_of_squares = update_.grad_sum_of_squares_on_device();
  grad_sum_of_squares_ = max_norm > 0 ? sum_of_squares : torch::Tensor();
  max_grad_norm_ = max_norm;
  return sum_of_squares.sqrt();
}

double AdamW::clip_grad_norm(double max_norm) { return clip_grad_norm_on_device(max_norm).item<double>(); }

AdamWStepFactors adamw_step_factors(const AdamWOptions& o, double lr, int64_t step, torch::Tensor grad_sum_of_squares,
                                    double max_grad_norm) {
  AdamWStepFactors f;
  f.lr = lr;
  f.beta1 = o.beta1;
  f.beta2 = o.beta2;
  f.eps = o.eps;
  f.weight_decay = o.weight_decay;
  f.step = step;
  f.grad_sum_of_squares = std::move(grad_sum_of_squares);
  f.max_grad_norm = max_grad_norm;
  return f;
}

void AdamW::step(double lr) {
  ++step_;
  update_.apply(adamw_step_factors(opt_, lr, step_, grad_sum_of_squares_, max_grad_norm_));
  grad_sum_of_squares_ = torch::Tensor();
}

void AdamW::zero_grad() {
  std::vector<torch::Tensor> grads;
  for (const auto& p : update_.tensors().params)
    if (p.grad().defined()) grads.push_back(p.mutable_grad());
  // One multi-tensor launch on CUDA instead of one per tensor.
  if (!grads.empty()) at::_foreach_zero_(grads);
}

AdamW::StateBytes AdamW::state_bytes() const {
  StateBytes b;
  const AdamWTensors& t = update_.tensors();
  for (std::size_t i = 0; i < t.params.size(); ++i) {
    if (!t.masters[i].is_same(t.params[i])) b.master += static_cast<int64_t>(t.masters[i].nbytes());
    b.moments += static_cast<int64_t>(t.exp_avgs[i].nbytes() + t.exp_avg_sqs[i].nbytes());
  }
  return b;
}

AdamW::State AdamW::snapshot() const {
  State s;
  s.step = step_;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    // A copy even on the CPU: the optimizer steps on while the state is written.
    s.tensors.emplace_back(name, t.detach().to(torch::kCPU, t.scalar_type(), /*non_blocking=*/false, /*copy=*/true)
                                     .contiguous());
  };
  const AdamWTensors& t = update_.tensors();
  for (std::size_t i = 0; i < names_.size(); ++i) {
    add(names_[i] + ".exp_avg", t.exp_avgs[i]);
    add(names_[i] + ".exp_avg_sq", t.exp_avg_sqs[i]);
    if (!t.masters[i].is_same(t.params[i])) add(names_[i] + ".master", t.masters[i]);
  }
  return s;
}

void AdamW::write_state(const State& state, const std::filesystem::path& file) {
  std::vector<TensorView> views;
  for (const auto& [name, c] : state.tensors)
    views.push_back({name, DType::F32, c.sizes().vec(), c.data_ptr(), static_cast<std::size_t>(c.nbytes())});
  write_safetensors(file, views, {{"format", "minipuzzle-adamw"}, {"step", std::to_string(state.step)}});
}

void AdamW::save(const std::filesystem::path& file) const { write_state(snapshot(), file); }

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
  auto read = [&](const std::string& name, const torch::Tensor& into) {
    const TensorInfo* t = f->find(name);
    if (!t || t->dtype != DType::F32 || t->shape != into.sizes().vec())
      throw InputError(fmt::format("{}: tensor {} missing or of the wrong shape (optimizer state of another model?)",
                                   file.string(), name));
    into.copy_(tensor_view(f, *t));
  };
  std::size_t expected = 0;
  // In place: the tensors (and the kernel's table of them) stay where they are.
  const AdamWTensors& t = update_.tensors();
  for (std::size_t i = 0; i < names_.size(); ++i) {
    const std::string& name = names_[i];
    read(name + ".exp_avg", t.exp_avgs[i]);
    read(name + ".exp_avg_sq", t.exp_avg_sqs[i]);
    expected += 2;
    if (!t.masters[i].is_same(t.params[i])) {
      // Saved from an fp32 run, resumed in bf16: the fp32 weights were loaded
      // into the model and the constructor's master copy holds them exactly.
      if (f->find(name + ".master")) {
        read(name + ".master", t.masters[i]);
        ++expected;
      }
    } else if (f->find(name + ".master")) {
      // Saved from a bf16 run, resumed in fp32: the master is the better copy.
      auto m = tensor_view(f, *f->find(name + ".master"));
      t.masters[i].copy_(m);
      ++expected;
    }
  }
  if (expected != f->tensors().size())
    throw InputError(fmt::format("{}: holds {} tensors, expected {} (optimizer state of another model?)", file.string(),
                                 f->tensors().size(), expected));
  step_ = step;
}

}  // namespace minipuzzle
