// Random AdamW tensor lists for the optimizer tests (the CPU ones here, the
// GPU parity test in tests/kernels/): one 1-D parameter per (size, dtype)
// with a gradient, its fp32 master (itself when fp32), small moments; odd
// sizes decay, even ones do not, so both kinds are covered.
#pragma once

#include <torch/torch.h>

#include <utility>
#include <vector>

#include "minipuzzle/adamw_update.h"

namespace minipuzzle::testing {

inline AdamWTensors random_adamw_tensors(const std::vector<std::pair<int64_t, torch::ScalarType>>& shapes) {
  AdamWTensors t;
  for (const auto& [n, dtype] : shapes) {
    auto p = torch::randn({n}).to(dtype);
    p.mutable_grad() = torch::randn({n}).to(dtype);
    t.params.push_back(p);
    t.masters.push_back(dtype == torch::kFloat32 ? p : p.to(torch::kFloat32));
    t.exp_avgs.push_back(torch::randn({n}) * 0.1);
    t.exp_avg_sqs.push_back(torch::rand({n}) * 0.01);
    t.decay.push_back(n % 2 == 1);
  }
  return t;
}

}  // namespace minipuzzle::testing
