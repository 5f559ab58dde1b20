// Device helpers shared by the kernels: element loads/stores in fp32, SiLU,
// and block-wide reductions. Internal to kernels/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "kernel_dtype.h"

// The CPU emulation tests compile these bodies as host code under another
// namespace, so their instantiations never meet nvcc's launch stubs of the
// same names at link time.
#ifndef MINIPUZZLE_KERNEL_DETAIL
#define MINIPUZZLE_KERNEL_DETAIL detail
#endif

namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// v rounded to T and back: reproduces a reference that casts to the model
// dtype between two steps.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f32(from_f32<T>(v)); }

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float silu(float v) { return v * sigmoid(v); }
// d silu(v) / dv = s (1 + v (1 - s)), s = sigmoid(v).
__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.0f + v * (1.0f - s));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32
// floats of shared memory; blockDim.x is a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Declares the kernel's dynamic shared memory as `type name[]` (the
// emulator in tests/ defines its own).
#ifndef MINIPUZZLE_DYNAMIC_SHARED
#define MINIPUZZLE_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Any trivially copyable struct through a warp shuffle, 4 bytes at a time.
template <typename S>
__device__ __forceinline__ S shfl_xor_struct(const S& v, int offset) {
  static_assert(sizeof(S) % 4 == 0, "shuffled structs are whole 4-byte words");
  S out;
  const int* src = reinterpret_cast<const int*>(&v);
  int* dst = reinterpret_cast<int*>(&out);
  for (int i = 0; i < static_cast<int>(sizeof(S) / 4); ++i) dst[i] = __shfl_xor_sync(0xffffffffu, src[i], offset);
  return out;
}

// Reduces v over the block with merge(acc&, other) (associative and
// commutative); every thread gets the result. `scratch` holds 32 S of shared
// memory; `identity` merges as a no-op.
template <typename S, typename Merge>
__device__ __forceinline__ S block_reduce(S v, Merge merge, S* scratch, const S& identity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1) merge(v, shfl_xor_struct(v, offset));
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : identity;
  for (int offset = 16; offset > 0; offset >>= 1) merge(v, shfl_xor_struct(v, offset));
  return v;
}

// Online softmax statistics: running max m and sum z of exp(. - m); `a`
// is a second sum weighted like z (forward KL's E_p[t - s]). Empty: m = -FLT_MAX.
__device__ __forceinline__ void merge_softmax(float& m, float& z, float& a, float m2, float z2, float a2) {
  if (m2 == -FLT_MAX) return;
  if (m == -FLT_MAX) {
    m = m2, z = z2, a = a2;
    return;
  }
  const float mn = fmaxf(m, m2);
  const float f1 = expf(m - mn), f2 = expf(m2 - mn);
  z = z * f1 + z2 * f2;
  a = a * f1 + a2 * f2;
  m = mn;
}

// Argmax: the larger value, on ties the smaller index (torch.argmax's rule).
__device__ __forceinline__ void merge_argmax(float& b, int64_t& i, float b2, int64_t i2) {
  if (b2 > b || (b2 == b && i2 < i)) b = b2, i = i2;
}

// Runs `body` with the CUDA element type for `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& body) {
  switch (dtype) {
    case DType::F32:
      body(float{});
      return;
    case DType::F16:
      body(__half{});
      return;
    case DType::BF16:
      body(__nv_bfloat16{});
      return;
  }
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
