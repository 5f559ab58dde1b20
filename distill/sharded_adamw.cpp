#include "minipuzzle/sharded_adamw.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "minipuzzle/errors.h"
#include "minipuzzle/sharded_checkpoint.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/tensor_bridge.h"

namespace minipuzzle {

namespace {

std::vector<torch::Tensor> contiguous_tensors_of(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                                 bool placeholders) {
  std::vector<torch::Tensor> out;
  for (const auto& np : named) {
    if (!placeholders && !np.second.is_contiguous())
      throw std::logic_error(fmt::format("sharded optimizer: parameter {} is not contiguous", np.first));
    out.push_back(np.second);
  }
  return out;
}

// The elements [start, start + numel) of a parameter, as a flat view that
// autograd does not track (its .grad is ours to set).
torch::Tensor flat_part(const torch::Tensor& p, int64_t start, int64_t numel) {
  return p.detach().view({-1}).narrow(0, start, numel);
}

}  // namespace

ShardedAdamW::ShardedAdamW(std::vector<std::pair<std::string, torch::Tensor>> named, AdamWOptions options,
                           DataParallel& dp, ShardLevel level, torch::Tensor parameter_shard)
    : dp_(dp),
      level_(level),
      opt_(options),
      params_(contiguous_tensors_of(named, level == ShardLevel::Parameters)),
      layout_(FlatParameterLayout::of(named, dp.world_size())),
      reduce_(dp, layout_, params_, level == ShardLevel::Gradients,
              [this](int64_t lo, const torch::Tensor& mean) {
                torch::NoGradGuard no_grad;
                const int64_t begin = layout_.begin(dp_.rank());
                if (level_ == ShardLevel::Gradients) {
                  grad_shard_.narrow(0, lo - begin, mean.numel()).copy_(mean);
                  return;
                }
                for (const auto& piece : layout_.pieces(lo, lo + mean.numel())) {
                  torch::Tensor& p = params_[piece.entry];
                  if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
                  flat_part(p.grad(), piece.start, piece.numel).copy_(mean.narrow(0, piece.flat - lo, piece.numel));
                }
              }) {
  if (level == ShardLevel::None) throw std::logic_error("ShardedAdamW: level none is the unsharded AdamW");
  if ((level == ShardLevel::Parameters) != parameter_shard.defined() ||
      (parameter_shard.defined() && parameter_shard.numel() != layout_.shard))
    throw std::logic_error("ShardedAdamW: a parameter shard of the layout's length is given at level parameters only");
  torch::NoGradGuard no_grad;
  const int rank = dp.rank();
  const int64_t begin = layout_.begin(rank);
  // A frozen parameter (an MoE router's correction bias, in the layout at
  // `parameters` only, where every weight is sharded) is never stepped: its
  // elements are left out of the update, whatever gradient reaches them.
  for (const auto& piece : layout_.pieces(begin, layout_.end(rank)))
    if (params_[piece.entry].requires_grad()) mine_.push_back(piece);
  const auto dtype = params_.empty() ? torch::kFloat32 : params_.front().scalar_type();
  const auto device = params_.empty() ? torch::Device(torch::kCPU) : params_.front().device();
  const auto fp32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  exp_avg_ = torch::zeros({layout_.shard}, fp32);
  exp_avg_sq_ = torch::zeros({layout_.shard}, fp32);
  bool all_fp32 = true;
  for (const auto& p : params_) all_fp32 = all_fp32 && p.scalar_type() == torch::kFloat32;
  if (!all_fp32) master_ = torch::zeros({layout_.shard}, fp32);
  const bool grad_shard = level_ == ShardLevel::Gradients || level_ == ShardLevel::Parameters;
  if (grad_shard) grad_shard_ = torch::zeros({layout_.shard}, fp32.dtype(dtype));
  AdamWTensors t;
  for (const auto& piece : mine_) {
    const torch::Tensor& p = params_[piece.entry];
    const int64_t at = piece.flat - begin;
    torch::Tensor part = parameter_shard.defined() ? parameter_shard.narrow(0, at, piece.numel)
                                                   : flat_part(p, piece.start, piece.numel);
    t.params.push_back(part);
    if (all_fp32) {
      t.masters.push_back(part);  // fp32 parameters are their own master
    } else {
      t.masters.push_back(master_.narrow(0, at, piece.numel));
      t.masters.back().copy_(part);
    }
    t.exp_avgs.push_back(exp_avg_.narrow(0, at, piece.numel));
    t.exp_avg_sqs.push_back(exp_avg_sq_.narrow(0, at, piece.numel));
    t.decay.push_back(AdamW::decays(named[piece.entry].first, p));
    if (grad_shard) part.mutable_grad() = grad_shard_.narrow(0, at, piece.numel);
  }
  update_ = std::make_unique<AdamWUpdate>(std::move(t));
}

void ShardedAdamW::accumulate_gradient(int64_t lo, const torch::Tensor& mean) {
  torch::NoGradGuard no_grad;
  grad_shard_.narrow(0, lo - layout_.begin(dp_.rank()), mean.numel()).add_(mean);
}

void ShardedAdamW::finish() {
  if (level_ == ShardLevel::Parameters) return;  // the units reduced during each backward
  reduce_.finish();
  if (level_ == ShardLevel::Optimizer) {
    // As the unsharded all-reduce: a parameter backward never reached gets
    // zeros on every rank, so every rank holds the same gradients' layout.
    torch::NoGradGuard no_grad;
    for (auto& p : params_)
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
  }
  bind_gradients();
}

// At `optimizer` the parts' gradients are views of the parameters' own
// gradients, which backward may have (re)created.
void ShardedAdamW::bind_gradients() {
  if (level_ != ShardLevel::Optimizer) return;
  const AdamWTensors& t = update_->tensors();
  for (std::size_t i = 0; i < mine_.size(); ++i) {
    const torch::Tensor& p = params_[mine_[i].entry];
    torch::Tensor part = t.params[i];
    part.mutable_grad() = p.grad().defined() ? flat_part(p.grad(), mine_[i].start, mine_[i].numel) : torch::Tensor();
  }
}

torch::Tensor ShardedAdamW::clip_grad_norm_on_device(double max_norm) {
  torch::Tensor partial = update_->grad_sum_of_squares_on_device();
  if (!params_.empty()) partial = partial.to(params_.front().device());
  torch::Tensor all = partial.reshape({1}).clone();
  dp_.all_reduce_sum_in_place(all);  // the partial sums of all ranges
  torch::Tensor sum_of_squares = all.reshape({});
  grad_sum_of_squares_ = max_norm > 0 ? sum_of_squares : torch::Tensor();
  max_grad_norm_ = max_norm;
  return sum_of_squares.sqrt();
}

void ShardedAdamW::step(double lr) {
  ++step_;
  update_->apply(adamw_step_factors(opt_, lr, step_, grad_sum_of_squares_, max_grad_norm_));
  grad_sum_of_squares_ = torch::Tensor();
  if (level_ != ShardLevel::Parameters) all_gather_parameters();
}

// Chunk by chunk (about one bucket of fp32 for all ranks together): chunk k
// of every rank's range travels in one all-gather.
void ShardedAdamW::all_gather_parameters() {
  if (!dp_.active() || params_.empty()) return;
  torch::NoGradGuard no_grad;
  const int world = dp_.world_size(), rank = dp_.rank();
  const int64_t chunk = std::max<int64_t>(1, std::min(layout_.shard, dp_.bucket_bytes() / 4 / world));
  const auto fp32 = torch::TensorOptions().dtype(torch::kFloat32).device(params_.front().device());
  torch::Tensor mine = torch::zeros({chunk}, fp32), all = torch::empty({chunk * world}, fp32);
  gather_bytes_ = static_cast<int64_t>(mine.nbytes() + all.nbytes());
  for (int64_t k = 0; k < layout_.shard; k += chunk) {
    const int64_t n = std::min(chunk, layout_.shard - k);
    torch::Tensor send = mine.narrow(0, 0, n), recv = all.narrow(0, 0, n * world);
    send.zero_();  // padding stays 0
    const int64_t lo = layout_.begin(rank) + k;
    for (const auto& piece : layout_.pieces(lo, lo + n))
      send.narrow(0, piece.flat - lo, piece.numel).copy_(flat_part(params_[piece.entry], piece.start, piece.numel));
    dp_.all_gather(recv, send);
    for (int q = 0; q < world; ++q) {
      if (q == rank) continue;
      const int64_t qlo = layout_.begin(q) + k;
      for (const auto& piece : layout_.pieces(qlo, qlo + n))
        flat_part(params_[piece.entry], piece.start, piece.numel)
            .copy_(recv.narrow(0, q * n + piece.flat - qlo, piece.numel));
    }
  }
}

void ShardedAdamW::zero_grad() {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params_)
    if (p.grad().defined()) grads.push_back(p.mutable_grad());
  if (grad_shard_.defined()) grads.push_back(grad_shard_);
  if (!grads.empty()) at::_foreach_zero_(grads);
}

ShardedAdamW::StateBytes ShardedAdamW::state_bytes() const {
  StateBytes b;
  if (master_.defined()) b.master = static_cast<int64_t>(master_.nbytes());
  b.moments = static_cast<int64_t>(exp_avg_.nbytes() + exp_avg_sq_.nbytes());
  for (const auto& p : params_)
    if (p.grad().defined()) b.gradients += static_cast<int64_t>(p.grad().nbytes());
  if (grad_shard_.defined()) b.gradients += static_cast<int64_t>(grad_shard_.nbytes());
  b.buckets = std::max(reduce_.buffer_bytes(), gather_bytes_);
  b.gradients_peak = reduce_.peak_grad_bytes() + (grad_shard_.defined() ? static_cast<int64_t>(grad_shard_.nbytes()) : 0);
  return b;
}

AdamW::State ShardedAdamW::snapshot() const {
  AdamW::State s;
  s.step = step_;
  auto add = [&](const char* name, const torch::Tensor& t) {
    s.tensors.emplace_back(name, t.detach().to(torch::kCPU, t.scalar_type(), false, /*copy=*/true).contiguous());
  };
  add("exp_avg", exp_avg_);
  add("exp_avg_sq", exp_avg_sq_);
  if (master_.defined()) add("master", master_);
  return s;
}

void ShardedAdamW::write_state(const AdamW::State& state, const FlatParameterLayout& layout, int rank,
                               const std::filesystem::path& file) {
  std::vector<TensorView> views;
  for (const auto& [name, c] : state.tensors)
    views.push_back({name, DType::F32, c.sizes().vec(), c.data_ptr(), static_cast<std::size_t>(c.nbytes())});
  write_safetensors(file, views,
                    {{"format", "minipuzzle-adamw-shard"},
                     {"step", std::to_string(state.step)},
                     {"rank", std::to_string(rank)},
                     {"world_size", std::to_string(layout.world_size)},
                     {"range", fmt::format("{}:{}", layout.begin(rank), layout.end(rank))}});
}

void ShardedAdamW::load(const std::filesystem::path& dir, const nlohmann::json& manifest) {
  torch::NoGradGuard no_grad;
  const int rank = dp_.rank();
  const int old_world = manifest["world_size"].get<int>();
  const int64_t old_shard = manifest["layout"]["shard"].get<int64_t>();
  const int64_t lo = layout_.begin(rank), hi = std::min(layout_.end(rank), layout_.total);
  int64_t step = manifest.value("step", int64_t{0});
  bool master_read = false;
  for (int q : optimizer_shards_over(manifest, lo, hi)) {
    const std::filesystem::path file = dir / manifest["files"][static_cast<std::size_t>(q)]["file"].get<std::string>();
    std::shared_ptr<SafetensorsFile> f;
    try {
      f = SafetensorsFile::open(file);
    } catch (const std::exception& e) {
      throw InputError(fmt::format("{}: unreadable optimizer shard ({})", file.string(), e.what()));
    }
    auto meta = f->metadata();
    if (meta["format"] != "minipuzzle-adamw-shard" || meta["rank"] != std::to_string(q) ||
        meta["world_size"] != std::to_string(old_world))
      throw InputError(fmt::format("{}: not the optimizer shard of rank {} of {}", file.string(), q, old_world));
    try {
      step = std::stoll(meta["step"]);
    } catch (...) {
      throw InputError(fmt::format("{}: bad 'step' in metadata", file.string()));
    }
    const int64_t qlo = old_shard * q;
    const int64_t a = std::max(lo, qlo), b = std::min({hi, qlo + old_shard, layout_.total});
    auto read = [&](const std::string& name, const torch::Tensor& into) {
      const TensorInfo* t = f->find(name);
      if (!t || t->dtype != DType::F32 || t->shape != std::vector<int64_t>{old_shard})
        throw InputError(fmt::format("{}: tensor {} missing or of the wrong shape (a shard of another layout?)",
                                     file.string(), name));
      into.narrow(0, a - lo, b - a).copy_(tensor_view(f, *t).narrow(0, a - qlo, b - a));
    };
    read("exp_avg", exp_avg_);
    read("exp_avg_sq", exp_avg_sq_);
    std::size_t expected = 2;
    if (f->find("master")) {
      ++expected;
      if (master_.defined()) {
        read("master", master_);
        master_read = true;
      }
      // Saved from a bf16 run, resumed in fp32: the parameters hold the
      // master rounded; the fp32 weights of the checkpoint are what we have.
    }
    if (f->tensors().size() != expected)
      throw InputError(fmt::format("{}: holds {} tensors, expected {}", file.string(), f->tensors().size(), expected));
  }
  if (master_read) {
    // The parameters take the master's rounding, as after the step that saved it.
    const AdamWTensors& t = update_->tensors();
    for (std::size_t i = 0; i < t.params.size(); ++i) t.params[i].copy_(t.masters[i]);
  }
  step_ = step;
}

}  // namespace minipuzzle
