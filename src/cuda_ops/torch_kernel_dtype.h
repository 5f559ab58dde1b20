// The kernels' element type code for a torch dtype (no CUDA headers, so the
// emulated kernel tests can use it too).
#pragma once

#include <torch/torch.h>

#include "kernel_dtype.h"

namespace minipuzzle::cuda_ops {

inline kernels::DType kernel_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat16:
      return kernels::DType::F16;
    case torch::kBFloat16:
      return kernels::DType::BF16;
    default:
      return kernels::DType::F32;
  }
}

}  // namespace minipuzzle::cuda_ops
