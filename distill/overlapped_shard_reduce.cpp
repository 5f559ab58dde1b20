#include "minipuzzle/overlapped_shard_reduce.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <exception>
#include <mutex>
#include <stdexcept>

namespace minipuzzle {

// One backward's bookkeeping. Hooks run on the autograd engine's thread (the
// caller's on CPU, a device thread on CUDA): the mutex orders them.
struct OverlappedShardReduce::State {
  std::vector<std::vector<FlatParameterLayout::Piece>> pieces;  // per bucket
  std::vector<std::vector<std::size_t>> buckets_of;             // per parameter
  std::vector<int> accumulated;                                 // per parameter, this backward
  std::vector<int64_t> waiting;                                 // per bucket: parameters not accumulated yet
  std::vector<int64_t> unstarted;                               // per parameter: its buckets not copied out yet
  int64_t next = -1;                                            // the next bucket to start (counting down)
  struct InFlight {
    std::size_t bucket;
    torch::Tensor flat;
    std::function<void()> wait;
  };
  std::deque<InFlight> in_flight;
  int64_t bytes = 0, peak = 0;
  std::vector<bool> counted;        // per parameter: its .grad is in live_grad_bytes
  int64_t live_grad_bytes = 0, peak_grad_bytes = 0;
  std::exception_ptr error;
  std::mutex mutex;
};

namespace {

constexpr std::size_t kMaxShardBucketsInFlight = 2;

}  // namespace

struct ShardReduceOps {
  static void complete_oldest(OverlappedShardReduce& r, OverlappedShardReduce::State& s) {
    auto f = std::move(s.in_flight.front());
    s.in_flight.pop_front();
    f.wait();
    const auto [lo, hi] = r.ranges_[f.bucket];
    if (r.layout_.begin(r.dp_.rank()) <= lo && hi <= r.layout_.end(r.dp_.rank())) {
      f.flat.mul_(1.0 / r.dp_.world_size());
      r.deliver_(lo, f.flat);
    }
    s.bytes -= static_cast<int64_t>(f.flat.nbytes());
  }

  static void start(OverlappedShardReduce& r, OverlappedShardReduce::State& s, std::size_t b) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    for (const auto& piece : s.pieces[b]) {
      const torch::Tensor& p = r.params_[piece.entry];
      const torch::Tensor& g = p.grad();
      parts.push_back(g.defined() ? g.detach().reshape({-1}).narrow(0, piece.start, piece.numel).to(torch::kFloat32)
                                  : torch::zeros({piece.numel}, p.options().dtype(torch::kFloat32)));
    }
    torch::Tensor flat = torch::cat(parts);
    parts.clear();
    // The parameters' gradients are copied out: the whole gradient of one
    // whose every bucket is, can go.
    for (const auto& piece : s.pieces[b])
      if (--s.unstarted[piece.entry] == 0 && r.free_grads_) {
        torch::Tensor& p = r.params_[piece.entry];
        if (s.counted[piece.entry] && p.grad().defined()) {
          s.live_grad_bytes -= static_cast<int64_t>(p.grad().nbytes());
          s.counted[piece.entry] = false;
        }
        p.mutable_grad() = torch::Tensor();
      }
    const int owner = static_cast<int>(r.ranges_[b].first / r.layout_.shard);
    auto wait = r.dp_.start_reduce(flat, owner);
    s.bytes += static_cast<int64_t>(flat.nbytes());
    s.peak = std::max(s.peak, s.bytes);
    s.in_flight.push_back({b, std::move(flat), std::move(wait)});
    while (s.in_flight.size() > kMaxShardBucketsInFlight) complete_oldest(r, s);
  }

  static void start_ready(OverlappedShardReduce& r, OverlappedShardReduce::State& s) {
    while (s.next >= 0 && s.waiting[static_cast<std::size_t>(s.next)] == 0) start(r, s, static_cast<std::size_t>(s.next--));
  }

  static void accumulated(OverlappedShardReduce& r, OverlappedShardReduce::State& s, std::size_t param) {
    if (++s.accumulated[param] > 1)
      throw std::runtime_error(fmt::format(
          "sharded gradient reduce: {} accumulated a gradient twice in one backward after its buckets started",
          r.layout_.entries[param].name));
    const torch::Tensor& g = r.params_[param].grad();
    if (!s.counted[param] && g.defined()) {
      s.live_grad_bytes += static_cast<int64_t>(g.nbytes());
      s.counted[param] = true;
      s.peak_grad_bytes = std::max(s.peak_grad_bytes, s.live_grad_bytes);
    }
    for (std::size_t b : s.buckets_of[param]) --s.waiting[b];
    start_ready(r, s);
  }
};

namespace {

struct ShardAccumulatedHook : torch::autograd::PostAccumulateGradHook {
  ShardAccumulatedHook(OverlappedShardReduce* r, OverlappedShardReduce::State* s, std::size_t param)
      : r_(r), s_(s), param_(param) {}
  void operator()(const torch::autograd::Variable&) override {
    std::lock_guard<std::mutex> lock(s_->mutex);
    if (s_->error) return;
    try {
      ShardReduceOps::accumulated(*r_, *s_, param_);
    } catch (...) {
      s_->error = std::current_exception();  // rethrown by finish(), not inside the autograd engine
    }
  }
  OverlappedShardReduce* r_;
  OverlappedShardReduce::State* s_;
  std::size_t param_;
};

}  // namespace

OverlappedShardReduce::OverlappedShardReduce(DataParallel& dp, const FlatParameterLayout& layout,
                                             std::vector<torch::Tensor> params, bool free_grads, Deliver deliver)
    : dp_(dp), layout_(layout), params_(std::move(params)), free_grads_(free_grads), deliver_(std::move(deliver)) {
  if (params_.size() != layout_.entries.size())
    throw std::logic_error("OverlappedShardReduce: parameters and layout differ");
  // Buckets of about bucket_bytes in fp32, cut at every rank's range.
  const int64_t cap = std::max<int64_t>(1, dp_.bucket_bytes() / 4);
  for (int64_t lo = 0; lo < layout_.total;) {
    const int64_t owner_end = layout_.end(static_cast<int>(lo / layout_.shard));
    const int64_t hi = std::min({layout_.total, lo + cap, owner_end});
    ranges_.emplace_back(lo, hi);
    lo = hi;
  }
}

OverlappedShardReduce::~OverlappedShardReduce() {
  if (state_)
    for (const auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

namespace {

std::unique_ptr<OverlappedShardReduce::State> fresh_shard_state(const FlatParameterLayout& layout,
                                                          const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  auto s = std::make_unique<OverlappedShardReduce::State>();
  s->buckets_of.resize(layout.entries.size());
  s->unstarted.assign(layout.entries.size(), 0);
  s->accumulated.assign(layout.entries.size(), 0);
  s->counted.assign(layout.entries.size(), false);
  for (std::size_t b = 0; b < ranges.size(); ++b) {
    s->pieces.push_back(layout.pieces(ranges[b].first, ranges[b].second));
    for (const auto& piece : s->pieces.back()) {
      s->buckets_of[piece.entry].push_back(b);
      ++s->unstarted[piece.entry];
    }
    s->waiting.push_back(static_cast<int64_t>(s->pieces.back().size()));
  }
  s->next = static_cast<int64_t>(ranges.size()) - 1;
  return s;
}

}  // namespace

void OverlappedShardReduce::arm() {
  state_ = fresh_shard_state(layout_, ranges_);
  // Gradients already held (earlier micro-batches of the step) count from the start.
  for (std::size_t i = 0; i < params_.size(); ++i)
    if (params_[i].grad().defined()) {
      state_->counted[i] = true;
      state_->live_grad_bytes += static_cast<int64_t>(params_[i].grad().nbytes());
    }
  state_->peak_grad_bytes = state_->live_grad_bytes;
  for (std::size_t i = 0; i < params_.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(params_[i], std::make_unique<ShardAccumulatedHook>(this, state_.get(), i));
}

void OverlappedShardReduce::finish() {
  std::unique_ptr<State> owned = std::move(state_);
  if (owned) {
    for (const auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  } else {
    owned = fresh_shard_state(layout_, ranges_);
    for (const auto& p : params_)  // backward ran unwatched: every gradient it left is alive now
      if (p.grad().defined()) owned->peak_grad_bytes += static_cast<int64_t>(p.grad().nbytes());
  }
  State& s = *owned;
  if (s.error) std::rethrow_exception(s.error);
  // What backward did not reach this time (all of it when not armed).
  for (std::size_t i = 0; i < params_.size(); ++i)
    if (s.accumulated[i] == 0)
      for (std::size_t b : s.buckets_of[i]) --s.waiting[b];
  ShardReduceOps::start_ready(*this, s);
  while (!s.in_flight.empty()) ShardReduceOps::complete_oldest(*this, s);
  buffer_bytes_ = s.peak;
  peak_grad_bytes_ = s.peak_grad_bytes;
}

}  // namespace minipuzzle
