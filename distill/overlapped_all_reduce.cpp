#include "minipuzzle/overlapped_all_reduce.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <exception>
#include <mutex>

#include "gradient_buckets.h"

namespace minipuzzle {

// One step's bookkeeping. Hooks run on the autograd engine's thread (the
// caller's on CPU, a device thread on CUDA): the mutex orders them.
struct OverlappedAllReduce::State {
  std::vector<Bucket> buckets;          // of the parameters, cut as all_reduce_gradients cuts their grads
  std::vector<size_t> bucket_of;        // parameter -> bucket
  std::vector<int> accumulated;         // per parameter, this backward
  std::vector<int64_t> waiting;         // per bucket: parameters not accumulated yet
  std::vector<bool> again;              // per bucket: a parameter accumulated after it started
  std::vector<torch::Tensor> flat;      // per bucket, once started
  std::vector<std::function<void()>> wait;
  int64_t next = -1;                    // the next bucket to start (counting down)
  std::exception_ptr error;
  std::mutex mutex;
};

namespace {

// The gradients of a bucket of parameters, as a bucket of their own.
Bucket grads_of(const Bucket& params) {
  Bucket g{{}, params.wire};
  for (const auto& p : params.tensors) g.tensors.push_back(p.grad());
  return g;
}

// Starts summing bucket b's current gradients.
void start_bucket(OverlappedAllReduce::State& s, DataParallel& dp, size_t b) {
  const Bucket grads = grads_of(s.buckets[b]);
  s.flat[b] = flatten(grads, grads.tensors.front().device());
  s.wait[b] = dp.start_sum(s.flat[b]);
}

// Starts buckets in the fixed order while the next one is complete.
void start_ready(OverlappedAllReduce::State& s, DataParallel& dp) {
  while (s.next >= 0 && s.waiting[static_cast<size_t>(s.next)] == 0) {
    start_bucket(s, dp, static_cast<size_t>(s.next--));
  }
}

struct AccumulatedHook : torch::autograd::PostAccumulateGradHook {
  AccumulatedHook(OverlappedAllReduce::State* s, DataParallel* dp, size_t param) : s_(s), dp_(dp), param_(param) {}
  void operator()(const torch::autograd::Variable& v) override {
    // A checkpointed block's recompute hands an unused parameter (an expert
    // no token chose) an undefined gradient, and the hook still fires: not
    // accumulated (finish() gives it zeros).
    if (!v.grad().defined()) return;
    std::lock_guard<std::mutex> lock(s_->mutex);
    if (s_->error) return;
    const size_t b = s_->bucket_of[param_];
    if (++s_->accumulated[param_] > 1) {
      // Its bucket may have started with a partial gradient: redone in finish().
      s_->again[b] = true;
      return;
    }
    try {
      --s_->waiting[b];
      start_ready(*s_, *dp_);
    } catch (...) {
      s_->error = std::current_exception();  // rethrown by finish(), not inside the autograd engine
    }
  }
  OverlappedAllReduce::State* s_;
  DataParallel* dp_;
  size_t param_;
};

}  // namespace

OverlappedAllReduce::OverlappedAllReduce(DataParallel& dp, const std::vector<torch::Tensor>& params) : dp_(dp) {
  for (const auto& p : params)
    if (p.requires_grad()) params_.push_back(p);
}

OverlappedAllReduce::~OverlappedAllReduce() {
  if (state_)
    for (const auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void OverlappedAllReduce::arm() {
  if (!dp_.active()) return;
  state_ = std::make_unique<State>();
  State& s = *state_;
  s.buckets = make_buckets(params_, dp_.bucket_bytes());
  for (size_t b = 0; b < s.buckets.size(); ++b)
    for (size_t i = 0; i < s.buckets[b].tensors.size(); ++i) s.bucket_of.push_back(b);
  s.accumulated.assign(params_.size(), 0);
  s.waiting.resize(s.buckets.size());
  for (size_t b = 0; b < s.buckets.size(); ++b) s.waiting[b] = static_cast<int64_t>(s.buckets[b].tensors.size());
  s.again.assign(s.buckets.size(), false);
  s.flat.resize(s.buckets.size());
  s.wait.resize(s.buckets.size());
  s.next = static_cast<int64_t>(s.buckets.size()) - 1;
  for (size_t i = 0; i < params_.size(); ++i)
    torch::autograd::impl::set_post_acc_grad_hooks(params_[i], std::make_unique<AccumulatedHook>(&s, &dp_, i));
}

void OverlappedAllReduce::finish() {
  if (!dp_.active()) return;
  if (!state_) {
    std::vector<torch::Tensor> params = params_;
    dp_.all_reduce_gradients(params);
    buffer_bytes_ = dp_.last_bucket_buffer_bytes();
    return;
  }
  for (const auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  const std::unique_ptr<State> owned = std::move(state_);
  State& s = *owned;
  if (s.error) std::rethrow_exception(s.error);
  torch::NoGradGuard no_grad;
  // Parameters backward never reached (unused this step): zero gradients, so
  // every rank reduces the same layout.
  for (size_t i = 0; i < params_.size(); ++i)
    if (s.accumulated[i] == 0) {
      auto& p = params_[i];
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      --s.waiting[s.bucket_of[i]];
    }
  start_ready(s, dp_);
  const double scale = 1.0 / dp_.world_size();
  for (int64_t b = static_cast<int64_t>(s.buckets.size()) - 1; b >= 0; --b) {
    const auto i = static_cast<size_t>(b);
    s.wait[i]();
    if (s.again[i]) {  // started early with a partial gradient: once more from the final one
      start_bucket(s, dp_, i);
      s.wait[i]();
    }
    s.flat[i].mul_(scale);
    unflatten(grads_of(s.buckets[i]), s.flat[i]);
  }
  buffer_bytes_ = 0;
  for (const auto& f : s.flat) buffer_bytes_ += static_cast<int64_t>(f.nbytes());
}

}  // namespace minipuzzle
