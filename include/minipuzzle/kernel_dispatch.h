// Which implementation a math op runs: our CUDA kernel (kernels/) for CUDA
// tensors when the build has the kernels, the LibTorch reference otherwise.
// The reference is the definition; the kernels are tested against it.
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// True when this binary was built with kernels/ (nvcc found, and not
// -DMINIPUZZLE_FORCE_REFERENCE_OPS=ON).
bool cuda_kernels_compiled();

// Process-wide switch, on by default; MINIPUZZLE_REFERENCE_OPS=1 in the
// environment turns it off at start (to compare both paths in one binary).
bool cuda_kernels_enabled();
void set_cuda_kernels_enabled(bool enabled);

// The kernels serve this tensor: compiled, enabled, and on a CUDA device.
bool use_cuda_kernels(const torch::Tensor& t);

// The SSD scan kernels are off unless asked for: they have not been timed
// against the reference on a GPU.
// MINIPUZZLE_SSD_KERNEL=1 in the environment turns it on at start.
bool ssd_scan_kernel_enabled();
void set_ssd_scan_kernel_enabled(bool enabled);

// With bf16 inputs the SSD kernels run their per-chunk products on tensor
// cores (on by default); off, on CUDA cores in fp32 (to compare both).
// MINIPUZZLE_SSD_TENSOR_CORES=0 in the environment turns it off at start.
bool ssd_tensor_cores_enabled();
void set_ssd_tensor_cores_enabled(bool enabled);

// The kernels read and write these element types.
bool cuda_kernel_dtype(torch::ScalarType t);

}  // namespace minipuzzle
