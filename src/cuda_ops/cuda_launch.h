// What every wrapper needs to launch a kernel on a tensor's device: the
// kernels' dtype code, the current stream, and a checked launch.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include <string>

#include "cuda_ops/torch_kernel_dtype.h"

namespace minipuzzle::cuda_ops {

inline cudaStream_t current_stream(const torch::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// A failed launch is a bug or a device fault, never a user error.
inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(err));
}

}  // namespace minipuzzle::cuda_ops
