// Forward: one block per (row, group); a block sum of y^2, then the output.
// Backward: one block per (tile of rows, group); each thread owns up to
// kPerThread channels of the group, keeps their weight-gradient sums in
// registers over the tile and adds them to dweight once.
// Kernel bodies and their launch geometry, shared by the launcher (.cu) and
// the CPU emulation tests (tests/kernels/emulated_kernels_test.cpp).
#pragma once

#include "device_math.cuh"
#include "gated_rms_norm_cuda.h"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kNormThreads = 256;
constexpr int kPerThread = static_cast<int>(kGatedNormMaxGroupSize / kNormThreads);
constexpr int kRowsPerTile = 32;

template <typename T>
__global__ void gated_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ z,
                                          const T* __restrict__ weight, float eps, T* __restrict__ out,
                                          float* __restrict__ rstd, int64_t channels, int64_t group_size) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, group = blockIdx.y;
  const int64_t base = row * channels + group * group_size;
  float sumsq = 0.0f;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const float y = to_f32(x[base + i]) * silu(to_f32(z[base + i]));
    sumsq += y * y;
  }
  sumsq = block_sum(sumsq, scratch);
  const float r = rsqrtf(sumsq / static_cast<float>(group_size) + eps);
  if (threadIdx.x == 0) rstd[row * gridDim.y + group] = r;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const float y = to_f32(x[base + i]) * silu(to_f32(z[base + i]));
    const float yhat = round_to<T>(y * r);
    out[base + i] = from_f32<T>(to_f32(weight[group * group_size + i]) * yhat);
  }
}

// yhat = y rstd, g = dout w (d loss / d yhat):
//   dy = rstd (g - yhat mean(g yhat)),  dx = dy silu(z),  dz = dy x silu'(z),
//   dweight += dout round(yhat).
template <typename T>
__global__ void gated_norm_backward_kernel(const T* __restrict__ x, const T* __restrict__ z,
                                           const T* __restrict__ weight, const float* __restrict__ rstd,
                                           const T* __restrict__ dout, T* __restrict__ dx, T* __restrict__ dz,
                                           float* __restrict__ dweight, int64_t rows, int64_t channels,
                                           int64_t group_size) {
  __shared__ float scratch[32];
  const int64_t group = blockIdx.y, groups = gridDim.y;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsPerTile;
  const int64_t r1 = min(r0 + kRowsPerTile, rows);
  const int64_t col0 = group * group_size;
  float w[kPerThread], dw[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kNormThreads;
    w[j] = i < group_size ? to_f32(weight[col0 + i]) : 0.0f;
    dw[j] = 0.0f;
  }
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t base = row * channels + col0;
    const float r = rstd[row * groups + group];
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kNormThreads;
      if (i < group_size) {
        const float yhat = to_f32(x[base + i]) * silu(to_f32(z[base + i])) * r;
        dot += to_f32(dout[base + i]) * w[j] * yhat;
      }
    }
    const float mean_dot = block_sum(dot, scratch) / static_cast<float>(group_size);
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kNormThreads;
      if (i < group_size) {
        const float xv = to_f32(x[base + i]), zv = to_f32(z[base + i]);
        const float gate = silu(zv);
        const float yhat = xv * gate * r;
        const float g = to_f32(dout[base + i]);
        const float dy = r * (g * w[j] - yhat * mean_dot);
        dx[base + i] = from_f32<T>(dy * gate);
        dz[base + i] = from_f32<T>(dy * xv * silu_grad(zv));
        dw[j] += g * round_to<T>(yhat);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * kNormThreads;
    if (i < group_size) atomicAdd(&dweight[col0 + i], dw[j]);
  }
}

inline bool shape_ok(const GatedNormShape& s) {
  return s.group_size > 0 && s.group_size <= kGatedNormMaxGroupSize && s.channels % s.group_size == 0 &&
         s.channels / s.group_size <= 65535;
}

// One block per (row, group); false past the grid limits.
inline bool forward_grid(const GatedNormShape& s, dim3& grid) {
  if (s.rows > 0x7fffffff) return false;
  grid = dim3(static_cast<unsigned>(s.rows), static_cast<unsigned>(s.channels / s.group_size));
  return true;
}

// One block per (tile of kRowsPerTile rows, group).
inline bool backward_grid(const GatedNormShape& s, dim3& grid) {
  const int64_t tiles = (s.rows + kRowsPerTile - 1) / kRowsPerTile;
  if (tiles > 0x7fffffff) return false;
  grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(s.channels / s.group_size));
  return true;
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
