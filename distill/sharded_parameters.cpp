#include "minipuzzle/sharded_parameters.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <stdexcept>

#include "minipuzzle/checkpoint_reader.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const ObserverList& unit_observers() {
  static const ObserverList none;
  return none;
}

// The right shape, dtype and device over one element (ParameterInit's
// placeholders): what a parameter holds while its unit is not gathered.
Tensor placeholder_like(const Tensor& p) {
  return torch::empty_strided(p.sizes(), std::vector<int64_t>(p.dim(), 0), p.options());
}

// Which unit a parameter belongs to, by its Hub name.
int64_t unit_of(const std::string& name, int64_t layers) {
  static const std::string block = "backbone.layers.";
  if (name.rfind("backbone.embeddings.", 0) == 0) return 0;
  if (name.rfind(block, 0) == 0) return 1 + std::stoll(name.substr(block.size()));
  return layers + 1;  // backbone.norm_f, lm_head
}

// A block whose forward keeps only its input and whose backward gathers,
// recomputes, backprops and reduces (activation_checkpointing.cpp's
// function with the gather and reduce around it). The block's parameters are
// not inputs: their gradients go to the owners, not to autograd.
class ShardedBlock : public torch::autograd::Function<ShardedBlock> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& h, ShardedParameters* units, int64_t layer) {
    ctx->saved_data["units"] = reinterpret_cast<int64_t>(units);
    ctx->saved_data["layer"] = layer;
    ctx->save_for_backward({h});
    return units->run_block(layer, h);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* units = reinterpret_cast<ShardedParameters*>(ctx->saved_data["units"].toInt());
    const int64_t layer = ctx->saved_data["layer"].toInt();
    Tensor h = ctx->get_saved_variables()[0];
    return {units->backward_block(layer, h, grad_outputs[0]), Tensor(), Tensor()};
  }
};

struct UnitGradientHook : torch::autograd::PostAccumulateGradHook {
  UnitGradientHook(ShardedParameters* units, int64_t unit) : units_(units), unit_(unit) {}
  void operator()(const torch::autograd::Variable&) override { units_->accumulated(unit_); }
  ShardedParameters* units_;
  int64_t unit_;
};

}  // namespace

ShardedParameters::ShardedParameters(HybridLM model, DataParallel& dp, bool trainable,
                                     std::shared_ptr<GatheredBytes> gathered)
    : model_(std::move(model)), dp_(dp), trainable_(trainable), gathered_(std::move(gathered)) {
  const ModelConfig& c = model_->config();
  if (c.tie_word_embeddings)
    throw InputError("--shard parameters: a model with tied word embeddings is not supported (the embedding "
                     "would belong to two units); use --shard gradients");
  if (!gathered_) gathered_ = std::make_shared<GatheredBytes>();
  for (auto& p : model_->named_parameters()) {
    named_.emplace_back(p.key(), p.value());
    params_.push_back(p.value());
  }
  layout_ = FlatParameterLayout::of(named_, dp.world_size());
  const int64_t layers = c.num_layers();
  unit_entries_.assign(static_cast<std::size_t>(layers + 2), {0, 0});
  std::vector<bool> seen(unit_entries_.size(), false);
  int64_t last = -1;
  for (std::size_t i = 0; i < named_.size(); ++i) {
    const int64_t u = unit_of(named_[i].first, layers);
    // Units must be contiguous in the flat order, so that a unit is one range.
    if (u < last || (u != last && seen[static_cast<std::size_t>(u)]))
      throw std::logic_error(fmt::format("sharded parameters: {} breaks the unit order", named_[i].first));
    auto& range = unit_entries_[static_cast<std::size_t>(u)];
    if (!seen[static_cast<std::size_t>(u)]) range.first = i;
    range.second = i + 1;
    seen[static_cast<std::size_t>(u)] = true;
    last = u;
  }
  for (std::size_t u = 0; u < seen.size(); ++u)
    if (!seen[u]) throw std::logic_error(fmt::format("sharded parameters: unit {} has no parameters", u));
  shard_ = torch::zeros({layout_.shard}, params_.front().options().requires_grad(false));
  gathers_.resize(unit_entries_.size());
  arrived_.assign(unit_entries_.size(), 0);
  reduced_.assign(unit_entries_.size(), false);
  torch::NoGradGuard no_grad;
  for (auto& p : params_) p.set_data(placeholder_like(p));
}

ShardedParameters::~ShardedParameters() {
  if (hooked_)
    for (const auto& p : params_)
      if (p.requires_grad()) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  // Collectives still in flight hold their buffers; they end with the group.
  for (auto& r : reducing_)
    for (auto& part : r.parts) try {
        part.wait();
      } catch (...) {
      }
}

void ShardedParameters::load(const CheckpointReader& reader) {
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  for (const auto& [name, p] : named_) {
    reader.check(name, p.sizes().vec());
    used.insert(name);
  }
  reader.check_no_extra(used);
  const int rank = dp_.rank();
  const int64_t begin = layout_.begin(rank);
  for (const auto& piece : layout_.pieces(begin, layout_.end(rank))) {
    const std::string& name = named_[piece.entry].first;
    Tensor whole = reader.read(name, shard_.scalar_type(), shard_.device());
    shard_.narrow(0, piece.flat - begin, piece.numel).copy_(whole.reshape({-1}).narrow(0, piece.start, piece.numel));
    reader.release(name);
  }
}

int64_t ShardedParameters::unit_lo(int64_t unit) const {
  return layout_.entries[unit_entries_[static_cast<std::size_t>(unit)].first].offset;
}

int64_t ShardedParameters::unit_hi(int64_t unit) const {
  const auto& e = layout_.entries[unit_entries_[static_cast<std::size_t>(unit)].second - 1];
  return e.offset + e.numel;
}

// One broadcast per rank whose range crosses [lo, hi), from that rank's shard.
void ShardedParameters::start_range(int64_t lo, int64_t hi, const Tensor& out,
                                    std::vector<std::function<void()>>& waits) {
  const int rank = dp_.rank();
  for (int q = static_cast<int>(lo / layout_.shard); q < layout_.world_size && layout_.begin(q) < hi; ++q) {
    const int64_t a = std::max(lo, layout_.begin(q)), b = std::min(hi, layout_.end(q));
    if (a >= b) continue;
    Tensor piece = out.narrow(0, a - lo, b - a);
    if (q == rank) piece.copy_(shard_.narrow(0, a - layout_.begin(q), b - a));
    waits.push_back(dp_.start_broadcast(piece, q));
  }
}

void ShardedParameters::prefetch(int64_t unit) {
  if (unit < 0 || unit >= units()) return;
  Gather& g = gathers_[static_cast<std::size_t>(unit)];
  if (g.flat.defined()) return;
  torch::NoGradGuard no_grad;
  const int64_t lo = unit_lo(unit), hi = unit_hi(unit);
  g.flat = torch::empty({hi - lo}, shard_.options());
  gathered_->now += static_cast<int64_t>(g.flat.nbytes());
  gathered_->peak = std::max(gathered_->peak, gathered_->now);
  start_range(lo, hi, g.flat, g.waits);
}

void ShardedParameters::materialise(int64_t unit) {
  Gather& g = gathers_[static_cast<std::size_t>(unit)];
  if (g.held) return;
  prefetch(unit);
  for (auto& w : g.waits) w();
  g.waits.clear();
  torch::NoGradGuard no_grad;
  const auto [first, last] = unit_entries_[static_cast<std::size_t>(unit)];
  const int64_t lo = unit_lo(unit);
  for (std::size_t i = first; i < last; ++i) {
    const auto& e = layout_.entries[i];
    params_[i].set_data(g.flat.narrow(0, e.offset - lo, e.numel).view(params_[i].sizes()));
  }
  g.held = true;
}

void ShardedParameters::release(int64_t unit) {
  if (unit < 0 || unit >= units()) return;
  Gather& g = gathers_[static_cast<std::size_t>(unit)];
  if (!g.flat.defined()) return;
  for (auto& w : g.waits) w();  // a prefetch never used: its collectives still pair up
  g.waits.clear();
  if (g.held) {
    torch::NoGradGuard no_grad;
    const auto [first, last] = unit_entries_[static_cast<std::size_t>(unit)];
    for (std::size_t i = first; i < last; ++i) params_[i].set_data(placeholder_like(params_[i]));
  }
  gathered_->now -= static_cast<int64_t>(g.flat.nbytes());
  g = Gather{};
}

Tensor ShardedParameters::run_block(int64_t layer, const Tensor& h) {
  const int64_t unit = 1 + layer;
  materialise(unit);
  prefetch(unit + 1);
  Tensor out;
  if (h.defined()) {
    torch::NoGradGuard no_grad;
    out = model_->layer(layer)->forward(h, unit_observers());
  }
  release(unit);
  return out;
}

Tensor ShardedParameters::forward_hidden(const Tensor& tokens) {
  const bool grad = trainable_ && torch::GradMode::is_enabled() && tokens.defined();
  materialise(0);
  prefetch(1);
  Tensor h = tokens.defined() ? model_->embed(tokens) : Tensor();
  // The embedding's backward needs only the indices and the table's shape.
  release(0);
  for (int64_t i = 0; i < model_->config().num_layers(); ++i)
    h = grad ? ShardedBlock::apply(h, this, i) : run_block(i, h);
  materialise(head_unit());
  return h.defined() ? model_->final_norm(h) : Tensor();
}

Tensor ShardedParameters::backward_block(int64_t layer, const Tensor& saved, const Tensor& grad_out) {
  const int64_t unit = 1 + layer;
  materialise(unit);
  if (layer >= 1) prefetch(unit - 1);  // the block below; the embedding needs no gather in backward
  Tensor h = saved.detach().requires_grad_(true);
  variable_list inputs = {h};
  const auto [first, last] = unit_entries_[static_cast<std::size_t>(unit)];
  // A frozen parameter (an MoE router's correction bias) is gathered for
  // the forward like any weight but takes no gradient: autograd refuses it
  // as an input, and the reduce sends zeros in its place.
  for (std::size_t i = first; i < last; ++i)
    if (params_[i].requires_grad()) inputs.push_back(params_[i]);
  Tensor out;
  {
    torch::AutoGradMode on(true);
    out = model_->layer(layer)->forward(h, unit_observers());
  }
  variable_list grads = torch::autograd::grad({out}, inputs, {grad_out}, /*retain_graph=*/false,
                                              /*create_graph=*/false, /*allow_unused=*/true);
  out = Tensor();
  std::vector<Tensor> unit_grads;
  std::size_t next = 1;
  for (std::size_t i = first; i < last; ++i)
    unit_grads.push_back(params_[i].requires_grad() ? grads[next++] : Tensor());
  reduce_unit(unit, unit_grads);
  release(unit);
  return grads[0];
}

void ShardedParameters::set_gradient_sink(Sink sink) {
  sink_ = std::move(sink);
  if (hooked_ || !trainable_) return;
  for (int64_t u : {int64_t{0}, head_unit()}) {
    const auto [first, last] = unit_entries_[static_cast<std::size_t>(u)];
    for (std::size_t i = first; i < last; ++i)
      if (params_[i].requires_grad())
        torch::autograd::impl::set_post_acc_grad_hooks(params_[i], std::make_unique<UnitGradientHook>(this, u));
  }
  hooked_ = true;
}

void ShardedParameters::accumulated(int64_t unit) {
  const auto [first, last] = unit_entries_[static_cast<std::size_t>(unit)];
  int64_t trained = 0;  // the hooks fire for parameters that take a gradient only
  for (std::size_t i = first; i < last; ++i) trained += params_[i].requires_grad() ? 1 : 0;
  if (++arrived_[static_cast<std::size_t>(unit)] < trained) return;
  std::vector<Tensor> grads;
  for (std::size_t i = first; i < last; ++i) grads.push_back(params_[i].grad());
  reduce_unit(unit, grads);
  if (unit == head_unit()) {
    release(unit);
    prefetch(unit - 1);  // the last block, whose backward comes next
  }
}

// The unit's gradient goes out in buckets of at most --bucket-size (fp32),
// cut in flat order (a bucket never leaves its unit); each bucket is one
// fp32 buffer, reduced with one reduce per owner whose range it crosses, at
// most two buckets in flight. Each gradient is converted straight into its
// bucket's slice: no per-tensor fp32 copy.
void ShardedParameters::reduce_unit(int64_t unit, const std::vector<Tensor>& grads) {
  torch::NoGradGuard no_grad;
  const auto [first, last] = unit_entries_[static_cast<std::size_t>(unit)];
  int64_t grad_bytes = 0;
  for (const Tensor& g : grads)
    if (g.defined()) grad_bytes += static_cast<int64_t>(g.nbytes());
  unit_grad_peak_ = std::max(unit_grad_peak_, grad_bytes);
  const int64_t lo = unit_lo(unit), hi = unit_hi(unit);
  const int64_t bucket = std::max<int64_t>(1, dp_.bucket_bytes() / 4);
  for (int64_t a = lo; a < hi; a += bucket) {
    const int64_t b = std::min(hi, a + bucket);
    // The oldest completes (and frees its buffer) before this one's exists.
    while (reducing_.size() >= 2) complete_oldest_reduce();
    Reduce r;
    r.lo = a;
    r.flat = torch::empty({b - a}, shard_.options().dtype(torch::kFloat32));
    for (const auto& piece : layout_.pieces(a, b)) {
      Tensor dst = r.flat.narrow(0, piece.flat - a, piece.numel);
      const Tensor& g = grads[piece.entry - first];
      if (g.defined())
        dst.copy_(g.reshape({-1}).narrow(0, piece.start, piece.numel));
      else
        dst.zero_();  // backward did not reach it, or it is frozen: every rank sends zeros all the same
    }
    for (int q = static_cast<int>(a / layout_.shard); q < layout_.world_size && layout_.begin(q) < b; ++q) {
      const int64_t x = std::max(a, layout_.begin(q)), y = std::min(b, layout_.end(q));
      if (x < y) r.parts.push_back({x, y, q, dp_.start_reduce(r.flat.narrow(0, x - a, y - x), q)});
    }
    reduce_bytes_ += static_cast<int64_t>(r.flat.nbytes());
    reduce_peak_ = std::max(reduce_peak_, reduce_bytes_);
    reducing_.push_back(std::move(r));
  }
  for (std::size_t i = first; i < last; ++i) params_[i].mutable_grad() = Tensor();  // the hooks' .grad
  reduced_[static_cast<std::size_t>(unit)] = true;
}

void ShardedParameters::complete_oldest_reduce() {
  Reduce r = std::move(reducing_.front());
  reducing_.pop_front();
  for (auto& part : r.parts) {
    part.wait();
    if (part.owner != dp_.rank()) continue;
    Tensor mean = r.flat.narrow(0, part.a - r.lo, part.b - part.a);
    mean.mul_(1.0 / dp_.world_size());
    if (sink_) sink_(part.a, mean);
  }
  reduce_bytes_ -= static_cast<int64_t>(r.flat.nbytes());
}

void ShardedParameters::finish_backward() {
  if (trainable_)
    for (int64_t u = 0; u < units(); ++u) {
      if (reduced_[static_cast<std::size_t>(u)]) continue;
      // Backward did not reach it (or part of it): every rank reduces it all the same.
      const auto [first, last] = unit_entries_[static_cast<std::size_t>(u)];
      std::vector<Tensor> grads;
      for (std::size_t i = first; i < last; ++i) grads.push_back(params_[i].grad());
      reduce_unit(u, grads);
    }
  while (!reducing_.empty()) complete_oldest_reduce();
  for (int64_t u = 0; u < units(); ++u) release(u);
  std::fill(arrived_.begin(), arrived_.end(), 0);
  std::fill(reduced_.begin(), reduced_.end(), false);
}

Tensor ShardedParameters::gather_tensor(std::size_t entry) {
  torch::NoGradGuard no_grad;
  const auto& e = layout_.entries[entry];
  Tensor out = torch::empty({e.numel}, shard_.options());
  std::vector<std::function<void()>> waits;
  start_range(e.offset, e.offset + e.numel, out, waits);
  for (auto& w : waits) w();
  return out.view(params_[entry].sizes());
}

}  // namespace minipuzzle
