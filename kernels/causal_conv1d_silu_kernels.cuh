// One thread per (channel, tile of tokens): adjacent threads read adjacent
// channels (coalesced on the channel-last layout) and each keeps its sliding
// window of `width` inputs in registers, so x is read once plus a halo of
// width-1 tokens per tile.
// Kernel bodies and their launch geometry, shared by the launcher (.cu) and
// the CPU emulation tests (tests/kernels/emulated_kernels_test.cpp).
#pragma once

#include <type_traits>

#include "causal_conv1d_silu_cuda.h"
#include "device_math.cuh"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kChannelsPerBlock = 128;
constexpr int kTokensPerTile = 64;

// This thread's channel, its tile of tokens [t0, t1), the offset of
// (sequence, token 0, channel) in the packed [batch, len, channels] tensors
// (base) and in x (xbase, x's token stride xs).
struct ConvThread {
  int64_t c, t0, t1, base, xbase, xs;
};

__device__ __forceinline__ ConvThread conv_thread(const Conv1dShape& s) {
  ConvThread p;
  p.c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  p.t0 = static_cast<int64_t>(blockIdx.y) * kTokensPerTile;
  p.t1 = min(p.t0 + kTokensPerTile, s.len);
  p.base = static_cast<int64_t>(blockIdx.z) * s.len * s.channels + p.c;
  p.xs = s.x_token_stride ? s.x_token_stride : s.channels;
  p.xbase = static_cast<int64_t>(blockIdx.z) * (s.x_batch_stride ? s.x_batch_stride : s.len * s.channels) + p.c;
  return p;
}

template <typename T, int K>
__global__ void conv_forward_kernel(Conv1dShape shape, const T* __restrict__ x, const float* __restrict__ weight,
                                    const float* __restrict__ bias, T* __restrict__ out) {
  const ConvThread p = conv_thread(shape);
  if (p.c >= shape.channels) return;
  const int64_t c = p.c, t0 = p.t0, t1 = p.t1, base = p.base, channels = shape.channels;
  const int64_t xbase = p.xbase, xs = p.xs;
  float w[K], win[K];
#pragma unroll
  for (int k = 0; k < K; ++k) w[k] = weight[c * K + k];
  const float b = bias ? bias[c] : 0.0f;
  // win[k] holds x[t - (K-1) + k].
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {
    const int64_t t = t0 - (K - 1) + k;
    win[k] = t >= 0 ? to_f32(x[xbase + t * xs]) : 0.0f;
  }
  for (int64_t t = t0; t < t1; ++t) {
    win[K - 1] = to_f32(x[xbase + t * xs]);
    float acc = b;
#pragma unroll
    for (int k = 0; k < K; ++k) acc += w[k] * win[k];
    out[base + t * channels] = from_f32<T>(silu(acc));
#pragma unroll
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }
}

// Per thread: dpre[t] = dout[t] * silu'(pre[t]) for t in [t0, t1 + K - 1)
// (pre recomputed from the x window), then
//   dx[s]  = sum_k w[k] dpre[s + (K-1) - k]            for s in the tile,
//   dw[k] += dpre[t] x[t - (K-1) + k], db += dpre[t]   for t in the tile,
// accumulated in registers and added to dweight/dbias once per thread.
template <typename T, int K>
__global__ void conv_backward_kernel(Conv1dShape shape, const T* __restrict__ x, const float* __restrict__ weight,
                                     const float* __restrict__ bias, const T* __restrict__ dout, T* __restrict__ dx,
                                     float* __restrict__ dweight, float* __restrict__ dbias) {
  const ConvThread p = conv_thread(shape);
  if (p.c >= shape.channels) return;
  const int64_t c = p.c, t0 = p.t0, t1 = p.t1, base = p.base, channels = shape.channels;
  const int64_t xbase = p.xbase, xs = p.xs;
  const int64_t len = shape.len;
  float w[K], xwin[K], dwin[K], dw[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    w[k] = weight[c * K + k];
    dwin[k] = 0.0f;
    dw[k] = 0.0f;
  }
  const float b = bias ? bias[c] : 0.0f;
  float db = 0.0f;
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {
    const int64_t t = t0 - (K - 1) + k;
    xwin[k] = t >= 0 ? to_f32(x[xbase + t * xs]) : 0.0f;
  }
  const int64_t t_stop = min(t1 + K - 1, len + K - 1);
  for (int64_t t = t0; t < t_stop; ++t) {
    // xwin[k] = x[t - (K-1) + k]; dwin[k] = dpre[t - (K-1) + k].
    float dpre = 0.0f;
    if (t < len) {
      xwin[K - 1] = to_f32(x[xbase + t * xs]);
      float pre = b;
#pragma unroll
      for (int k = 0; k < K; ++k) pre += w[k] * xwin[k];
      dpre = to_f32(dout[base + t * channels]) * silu_grad(pre);
      if (t < t1) {
#pragma unroll
        for (int k = 0; k < K; ++k) dw[k] += dpre * xwin[k];
        db += dpre;
      }
    } else {
      xwin[K - 1] = 0.0f;
    }
    dwin[K - 1] = dpre;
    const int64_t s = t - (K - 1);
    if (s >= t0 && s < t1) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < K; ++k) acc += w[k] * dwin[K - 1 - k];
      dx[base + s * channels] = from_f32<T>(acc);
    }
#pragma unroll
    for (int k = 0; k < K - 1; ++k) {
      xwin[k] = xwin[k + 1];
      dwin[k] = dwin[k + 1];
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) atomicAdd(&dweight[c * K + k], dw[k]);
  if (dbias) atomicAdd(&dbias[c], db);
}

// False when the shape exceeds the grid limits.
inline bool grid_for(const Conv1dShape& s, dim3& grid) {
  const int64_t tiles = (s.len + kTokensPerTile - 1) / kTokensPerTile;
  if (s.batch > 65535 || tiles > 65535) return false;
  grid = dim3(static_cast<unsigned>((s.channels + kChannelsPerBlock - 1) / kChannelsPerBlock),
              static_cast<unsigned>(tiles), static_cast<unsigned>(s.batch));
  return true;
}

template <typename F>
void dispatch_width(int64_t width, F&& body) {
  switch (width) {
    case 2:
      body(std::integral_constant<int, 2>{});
      return;
    case 3:
      body(std::integral_constant<int, 3>{});
      return;
    case 4:
      body(std::integral_constant<int, 4>{});
      return;
  }
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
