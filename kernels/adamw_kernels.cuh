// AdamW update and gradient sum of squares over a table of tensors
// (adamw_cuda.h): one block per chunk of one tensor. Each thread handles four
// consecutive elements per step where the slot allows vector loads (16-byte
// fp32 state, 8-byte 16-bit parameters), single elements otherwise and at a
// tensor's ragged end. Memory-bound: per element it reads the gradient,
// master, both moments and writes master, moments and the rounded parameter
// once (26 bytes for bf16 parameters), where the LibTorch reference makes
// about ten passes.
// Kernel bodies, shared by the launcher (.cu) and the CPU emulation tests.
#pragma once

#include "adamw_cuda.h"
#include "device_math.cuh"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kAdamWThreads = 256;

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

// The update of one element, in the reference's order of operations.
__device__ __forceinline__ void adamw_element(float g, float& w, float& m, float& v, bool decay,
                                              const AdamWFactors& f) {
  g *= f.grad_scale;
  m = m * f.beta1 + g * f.one_minus_beta1;
  v = v * f.beta2 + g * g * f.one_minus_beta2;
  if (decay) w *= f.decay_factor;
  const float denom = sqrtf(v / f.bias_correction2) + f.eps;
  w += f.step_size * (m / denom);
}

template <typename T>
__device__ void adamw_chunk(const AdamWSlot& s, int64_t begin, int64_t end, const AdamWFactors& f) {
  T* param = static_cast<T*>(s.param);
  const T* grad = static_cast<const T*>(s.grad);
  // fp32 parameters are their own master: written once, as `master`.
  const bool own_copy = static_cast<void*>(s.master) != s.param;
  const bool decay = s.decay != 0;
  int64_t i = begin;
  if (s.vector_ok) {
    const int64_t vector_end = begin + (end - begin) / 4 * 4;
    for (int64_t j = begin + 4 * static_cast<int64_t>(threadIdx.x); j < vector_end; j += 4 * blockDim.x) {
      const Pack4<T> g = *reinterpret_cast<const Pack4<T>*>(grad + j);
      Pack4<float> w = *reinterpret_cast<const Pack4<float>*>(s.master + j);
      Pack4<float> m = *reinterpret_cast<const Pack4<float>*>(s.exp_avg + j);
      Pack4<float> v = *reinterpret_cast<const Pack4<float>*>(s.exp_avg_sq + j);
      Pack4<T> p;
      for (int k = 0; k < 4; ++k) {
        adamw_element(to_f32(g.v[k]), w.v[k], m.v[k], v.v[k], decay, f);
        p.v[k] = from_f32<T>(w.v[k]);
      }
      *reinterpret_cast<Pack4<float>*>(s.master + j) = w;
      *reinterpret_cast<Pack4<float>*>(s.exp_avg + j) = m;
      *reinterpret_cast<Pack4<float>*>(s.exp_avg_sq + j) = v;
      if (own_copy) *reinterpret_cast<Pack4<T>*>(param + j) = p;
    }
    i = vector_end;
  }
  for (int64_t j = i + threadIdx.x; j < end; j += blockDim.x) {
    float w = s.master[j], m = s.exp_avg[j], v = s.exp_avg_sq[j];
    adamw_element(to_f32(grad[j]), w, m, v, decay, f);
    s.master[j] = w;
    s.exp_avg[j] = m;
    s.exp_avg_sq[j] = v;
    if (own_copy) param[j] = from_f32<T>(w);
  }
}

// The host's clip rule (AdamW::clip_grad_norm) in the same fp64 operations,
// so both give the same fp32 factor bit for bit.
__device__ __forceinline__ float clip_factor(double sum_of_squares, double max_norm) {
  const double norm = sqrt(sum_of_squares);
  return static_cast<float>(norm > max_norm ? max_norm / (norm + 1e-6) : 1.0);
}

__global__ void __launch_bounds__(kAdamWThreads)
    adamw_update_kernel(const AdamWSlot* __restrict__ slots, const AdamWChunkRef* __restrict__ chunks,
                        AdamWFactors factors, const double* __restrict__ grad_sum_of_squares) {
  if (grad_sum_of_squares) factors.grad_scale = clip_factor(*grad_sum_of_squares, factors.max_grad_norm);
  const AdamWChunkRef c = chunks[blockIdx.x];
  const AdamWSlot s = slots[c.slot];
  const int64_t begin = static_cast<int64_t>(c.chunk) * kAdamWChunk;
  const int64_t end = min(begin + kAdamWChunk, s.numel);
  switch (s.dtype) {
    case DType::F32:
      adamw_chunk<float>(s, begin, end, factors);
      break;
    case DType::F16:
      adamw_chunk<__half>(s, begin, end, factors);
      break;
    case DType::BF16:
      adamw_chunk<__nv_bfloat16>(s, begin, end, factors);
      break;
  }
}

template <typename T>
__device__ float squares_of_chunk(const T* grad, int64_t begin, int64_t end) {
  float sum = 0.0f;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const float g = to_f32(grad[j]);
    sum += g * g;
  }
  return sum;
}

// partials[b] = sum of squares of block b's chunk.
__global__ void __launch_bounds__(kAdamWThreads)
    grad_squares_kernel(const AdamWSlot* __restrict__ slots, const AdamWChunkRef* __restrict__ chunks,
                        float* __restrict__ partials) {
  __shared__ float scratch[32];
  const AdamWChunkRef c = chunks[blockIdx.x];
  const AdamWSlot s = slots[c.slot];
  const int64_t begin = static_cast<int64_t>(c.chunk) * kAdamWChunk;
  const int64_t end = min(begin + kAdamWChunk, s.numel);
  float sum = 0.0f;
  switch (s.dtype) {
    case DType::F32:
      sum = squares_of_chunk(static_cast<const float*>(s.grad), begin, end);
      break;
    case DType::F16:
      sum = squares_of_chunk(static_cast<const __half*>(s.grad), begin, end);
      break;
    case DType::BF16:
      sum = squares_of_chunk(static_cast<const __nv_bfloat16*>(s.grad), begin, end);
      break;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *out = the partials' sum in fp64; one block, each thread a fixed stride.
__global__ void __launch_bounds__(kAdamWThreads)
    sum_partials_kernel(const float* __restrict__ partials, int64_t n, double* __restrict__ out) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sum += static_cast<double>(partials[j]);
  sum = block_reduce(
      sum, [](double& a, double b) { a += b; }, scratch, 0.0);
  if (threadIdx.x == 0) *out = sum;
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
