// The gradient reduction of the sharded levels (--shard optimizer |
// gradients): the flat layout (flat_parameter_layout.h) cut into buckets
// that never cross a rank's range, each summed over ranks into its one
// owner (a reduce: together the buckets are a reduce-scatter into the
// owners' ranges), started as soon as backward has accumulated every
// gradient in it, the last bucket first as backward reaches it first. At
// most two buckets are in flight: the third waits for the oldest, whose
// fp32 buffer is then handed over and released.
//
//   OverlappedShardReduce r(dp, layout, params, free_grads, deliver);
//   r.arm();  loss.backward();  r.finish();   // overlapped
//   loss.backward();  r.finish();             // or after backward
//
// deliver(lo, mean) runs on the owner for each bucket [lo, lo + mean.numel())
// with the fp32 mean over ranks. free_grads (--shard gradients): each
// parameter's .grad is dropped once every bucket holding a part of it has
// been copied out, so no rank keeps a full-size gradient.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "minipuzzle/data_parallel.h"
#include "minipuzzle/flat_parameter_layout.h"

namespace minipuzzle {

class OverlappedShardReduce {
 public:
  using Deliver = std::function<void(int64_t lo, const torch::Tensor& mean)>;
  // params: index-aligned with layout.entries.
  OverlappedShardReduce(DataParallel& dp, const FlatParameterLayout& layout, std::vector<torch::Tensor> params,
                        bool free_grads, Deliver deliver);
  ~OverlappedShardReduce();
  OverlappedShardReduce(const OverlappedShardReduce&) = delete;
  OverlappedShardReduce& operator=(const OverlappedShardReduce&) = delete;

  void arm();
  // Reduces what backward did not start (everything when not armed), waits
  // for every bucket and delivers; removes the hooks. A parameter without a
  // gradient counts as zeros.
  void finish();
  // The most fp32 bucket bytes held at once during the last finish() (with
  // the hooks' part): the rank's `buckets` state.
  int64_t buffer_bytes() const { return buffer_bytes_; }
  int64_t buckets() const { return static_cast<int64_t>(ranges_.size()); }
  // The most bytes of parameter gradients (.grad) alive at once during the
  // last armed backward, as the hooks saw them: what shows that at
  // `gradients` no rank holds a full-size gradient (0 when not armed).
  int64_t peak_grad_bytes() const { return peak_grad_bytes_; }

  struct State;

 private:
  friend struct ShardReduceOps;
  DataParallel& dp_;
  const FlatParameterLayout& layout_;
  std::vector<torch::Tensor> params_;
  bool free_grads_;
  Deliver deliver_;
  std::vector<std::pair<int64_t, int64_t>> ranges_;  // the buckets' flat ranges
  std::unique_ptr<State> state_;
  int64_t buffer_bytes_ = 0;
  int64_t peak_grad_bytes_ = 0;
};

}  // namespace minipuzzle
