// The data-parallel gradient all-reduce overlapped with backward: each
// bucket's sum starts as soon as backward has accumulated every gradient in
// it, while backward goes on with earlier layers.
//
//   OverlappedAllReduce sync(dp, params);
//   for each micro-batch m:
//     if (m is the last) sync.arm();      // before its backward()
//     loss.backward();
//   sync.finish();                          // instead of dp.all_reduce_gradients(params)
//
// The buckets are those of DataParallel::all_reduce_gradients (same cuts,
// same flat buffers), so the means are bit-identical to it. Buckets start in
// one fixed order on every rank (the last first, as backward reaches it
// first), a bucket waiting for the one before it. A parameter that
// accumulates twice in one backward (used by two graphs) makes finish()
// reduce its bucket again from the final gradient: still exact, no overlap.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "minipuzzle/data_parallel.h"

namespace minipuzzle {

class OverlappedAllReduce {
 public:
  // params: those that may get gradients (requires_grad ones are used).
  OverlappedAllReduce(DataParallel& dp, const std::vector<torch::Tensor>& params);
  ~OverlappedAllReduce();
  OverlappedAllReduce(const OverlappedAllReduce&) = delete;
  OverlappedAllReduce& operator=(const OverlappedAllReduce&) = delete;

  // Hooks every parameter's gradient accumulation until finish().
  void arm();
  // Starts what backward did not, waits for every sum and writes the means
  // into .grad(); removes the hooks. Without arm(): the plain all-reduce.
  void finish();
  // Bytes of the fp32 bucket buffers the last finish() held at once: every
  // bucket's when armed (they live until the means are written back), one
  // bucket's otherwise; 0 for one rank. The rank's `buckets` state.
  int64_t buffer_bytes() const { return buffer_bytes_; }

  struct State;

 private:
  DataParallel& dp_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<State> state_;
  int64_t buffer_bytes_ = 0;
};

}  // namespace minipuzzle
