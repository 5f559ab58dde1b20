// Mamba2's gated RMSNorm (norm after gate, G groups), forward and backward.
// Definition: src/rms_norm.cpp (gated_rms_norm_reference):
//   y = x * silu(z) in fp32; yhat = y * rstd over each group of channels;
//   out = weight * round_to_dtype(yhat), the product rounded to dtype.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernel_dtype.h"

namespace minipuzzle::kernels {

// The largest group the kernels handle (channels per group).
constexpr int64_t kGatedNormMaxGroupSize = 8192;

struct GatedNormShape {
  int64_t rows = 0, channels = 0, group_size = 0;  // channels % group_size == 0
};

// x, z, out: [rows, channels], `dtype`, contiguous; weight [channels] in
// `dtype`; rstd [rows, channels / group_size] fp32 (kept for backward).
cudaError_t gated_rms_norm_forward(const GatedNormShape& shape, DType dtype, const void* x, const void* z,
                                   const void* weight, float eps, void* out, float* rstd, cudaStream_t stream);

// From dout: dx, dz (`dtype`) and dweight [channels] fp32 (overwritten).
cudaError_t gated_rms_norm_backward(const GatedNormShape& shape, DType dtype, const void* x, const void* z,
                                    const void* weight, const float* rstd, const void* dout, void* dx, void* dz,
                                    float* dweight, cudaStream_t stream);

}  // namespace minipuzzle::kernels
