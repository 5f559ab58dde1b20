// The fused AdamW kernel's description of each tensor (kernels/adamw_cuda.h),
// built from AdamWTensors. Header-only so the emulated kernel test builds its
// host-memory table with the same code as the CUDA wrapper.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "adamw_cuda.h"
#include "cuda_ops/torch_kernel_dtype.h"
#include "minipuzzle/adamw_update.h"

namespace minipuzzle::cuda_ops {

// The slots for the parameters that have a gradient, in order. vector_ok
// when every pointer allows the kernel's 4-element loads.
inline std::vector<kernels::AdamWSlot> adamw_slots(const AdamWTensors& t) {
  const auto aligned = [](const void* p, std::size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; };
  std::vector<kernels::AdamWSlot> slots;
  for (std::size_t i = 0; i < t.params.size(); ++i) {
    const torch::Tensor& p = t.params[i];
    if (!p.grad().defined()) continue;
    kernels::AdamWSlot s;
    s.param = p.data_ptr();
    s.grad = p.grad().data_ptr();
    s.master = t.masters[i].data_ptr<float>();
    s.exp_avg = t.exp_avgs[i].data_ptr<float>();
    s.exp_avg_sq = t.exp_avg_sqs[i].data_ptr<float>();
    s.numel = p.numel();
    s.dtype = kernel_dtype(p.scalar_type());
    s.decay = t.decay[i] ? 1 : 0;
    const std::size_t pack = 4 * static_cast<std::size_t>(p.element_size());
    s.vector_ok = aligned(s.param, pack) && aligned(s.grad, pack) && aligned(s.master, 16) && aligned(s.exp_avg, 16) &&
                  aligned(s.exp_avg_sq, 16);
    slots.push_back(s);
  }
  return slots;
}

}  // namespace minipuzzle::cuda_ops
