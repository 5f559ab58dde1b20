// Mamba2 SSD chunked scan, forward and backward.
// Definition: src/ssd_scan.cpp (ssd_scan_reference):
//   h[t] = exp(dt[t] A) h[t-1] + dt[t] x[t] B[t]^T,  y[t] = h[t] C[t] + D x[t],
// computed chunk by chunk: decay cumsums, chunk states, state passing
// between chunks, chunk outputs. Sums in fp32; with bf16 inputs the
// per-chunk products run on tensor cores (SsdShape::tensor_cores).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernel_dtype.h"

namespace minipuzzle::kernels {

struct SsdShape {
  int64_t batch = 0, len = 0, heads = 0, head_dim = 0, groups = 0, state = 0, chunk = 0;
  // Element strides. x: [batch, len, heads, head_dim] with heads and head_dim
  // packed (head stride head_dim, unit stride inside); B, C: [batch, len,
  // groups, state] likewise (group stride state). The mixer's views of one
  // [batch, len, conv_dim] tensor have token stride conv_dim.
  int64_t x_batch_stride = 0, x_token_stride = 0;
  int64_t b_batch_stride = 0, b_token_stride = 0;
  int64_t c_batch_stride = 0, c_token_stride = 0;
  // bf16: the per-chunk matrix products on tensor cores (operands that are
  // not exact in bf16 split in two, see block_gemm.cuh); off: CUDA cores in
  // fp32, as for fp32 and fp16 inputs always.
  bool tensor_cores = true;
};

// Sizes the kernels take: chunk 1..kSsdMaxChunk, heads a multiple of groups.
constexpr int64_t kSsdMaxChunk = 256;
bool ssd_shape_supported(const SsdShape& shape);

// Bytes of scratch memory ssd_scan_forward needs (256-byte aligned pieces).
size_t ssd_scan_workspace_bytes(const SsdShape& shape);

// dt as the kernels take it: values [batch, len, heads] in `dtype` with unit
// head stride (the mixer's slice of in_proj's output needs no copy), bias
// [heads] fp32 or null. With `softplus` the kernels use
//   dt = max(softplus(values + bias), min)        (softplus threshold 20)
// as transformers' Mamba2 mixer does, in fp32; without it, values + bias.
struct SsdDt {
  DType dtype = DType::F32;
  const void* values = nullptr;
  int64_t batch_stride = 0, token_stride = 0;
  const float* bias = nullptr;
  bool softplus = false;
  float min = 0.0f;
};

// x, B, C in `dtype`; A [heads] fp32 (negative); D [heads] fp32 or null.
// y [batch, len, heads, head_dim] fp32 contiguous.
cudaError_t ssd_scan_forward(const SsdShape& shape, DType dtype, const void* x, const SsdDt& dt, const float* A,
                             const void* B, const void* C, const float* D, float* y, void* workspace,
                             cudaStream_t stream);

// Bytes of scratch memory ssd_scan_backward needs for x, B, C in `dtype`.
size_t ssd_scan_backward_workspace_bytes(const SsdShape& shape, DType dtype);

// Gradients of sum(dy * y) for the inputs of ssd_scan_forward; dy [batch,
// len, heads, head_dim] fp32 contiguous. Outputs fp32, contiguous: dx like
// dy, ddt [batch, len, heads] (with respect to dt.values), dB and dC [batch,
// len, groups, state], dA [heads], dD [heads] (or null when D is null),
// ddt_bias [heads] (or null when dt.bias is null). Overwrites all of them.
cudaError_t ssd_scan_backward(const SsdShape& shape, DType dtype, const void* x, const SsdDt& dt, const float* A,
                              const void* B, const void* C, const float* D, const float* dy, float* dx, float* ddt,
                              float* dA, float* dB, float* dC, float* dD, float* ddt_bias, void* workspace,
                              cudaStream_t stream);

}  // namespace minipuzzle::kernels
