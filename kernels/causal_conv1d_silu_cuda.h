// Depthwise causal conv1d + SiLU on the channel-last layout in_proj produces
// ([batch, len, channels], channels contiguous), forward and backward.
// Definition: src/causal_conv1d.cpp (causal_conv1d_silu_reference).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernel_dtype.h"

namespace minipuzzle::kernels {

// Widths the kernels are compiled for.
constexpr bool conv1d_width_supported(int64_t width) { return width >= 2 && width <= 4; }

struct Conv1dShape {
  int64_t batch = 0, len = 0, channels = 0, width = 0;
  // x's element strides (channels contiguous); 0 = packed [batch, len,
  // channels]. The mixer's xBC is a channel slice of in_proj's output.
  int64_t x_batch_stride = 0, x_token_stride = 0;
};

// out[b, t, c] = silu(bias[c] + sum_k weight[c, k] x[b, t - (width-1) + k, c]),
// x before position 0 read as zero. x (strides in the shape), out
// (contiguous): `dtype`; weight
// [channels, width] and bias [channels] (or null) fp32; fp32 accumulation.
cudaError_t causal_conv1d_silu_forward(const Conv1dShape& shape, DType dtype, const void* x, const float* weight,
                                       const float* bias, void* out, cudaStream_t stream);

// Gradients for d loss / d out = dout (contiguous): dx (`dtype`, contiguous
// [batch, len, channels]), dweight [channels, width]
// and dbias [channels] in fp32 (dbias may be null). The pre-activation is
// recomputed from x, not stored. Overwrites dweight and dbias.
cudaError_t causal_conv1d_silu_backward(const Conv1dShape& shape, DType dtype, const void* x, const float* weight,
                                        const float* bias, const void* dout, void* dx, float* dweight, float* dbias,
                                        cudaStream_t stream);

}  // namespace minipuzzle::kernels
