// SSD forward in five steps, each one kernel; here with plain loops on CUDA
// cores in fp32 (steps 2, 4, 5 for bf16: ssd_scan_tensor_core_kernels.cuh):
//   1. dt, cumsum  dt[t] = max(softplus(raw[t] + bias), min) (or raw as given),
//               a[t] = sum_{s<=t in chunk} dt[s] A          one thread per (b, h, chunk)
//   2. states   S_c = sum_t exp(a_last - a[t]) dt[t] x[t] B[t]^T         block per (b, c, h)
//   3. passing  H_c = exp(a_last_c) H_{c-1} + S_c; S_c := H_{c-1}          block per (b, h)
//   4. CB       CB[t, s] = C[t] . B[s], s <= t                            block per (b, c, g)
//   5. output   y[t] = sum_{s<=t} CB[t,s] exp(a[t]-a[s]) dt[s] x[s]
//                      + exp(a[t]) H_{c-1} C[t] + D x[t]                 block per (b, c, h)
// Every exponent is a sum of dt A <= 0 terms: no overflow.
// Kernel bodies and their launch geometry, shared by the launcher (.cu) and
// the CPU emulation tests (tests/kernels/emulated_kernels_test.cpp); the
// launch order is in ssd_scan_steps.cuh.
#pragma once

#include "device_math.cuh"
#include "ssd_scan_cuda.h"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kSsdThreads = 128;

__host__ __device__ inline int64_t ssd_chunks(const SsdShape& s) { return (s.len + s.chunk - 1) / s.chunk; }

// Workspace layout: cumsums [b, H, nc, chunk], states [b, nc, H, P, N],
// CB [b, nc, G, chunk, chunk], dt as used [b, L, H]; each piece 256-byte aligned.
constexpr int kSsdPieces = 4;
struct SsdWorkspace {
  float *cumsum, *states, *cb, *dt;
};

inline size_t ssd_align(size_t bytes) { return (bytes + 255) / 256 * 256; }

inline void ssd_piece_sizes(const SsdShape& s, size_t sizes[kSsdPieces]) {
  const size_t nc = static_cast<size_t>(ssd_chunks(s)), b = static_cast<size_t>(s.batch);
  sizes[0] = ssd_align(sizeof(float) * b * s.heads * nc * s.chunk);
  sizes[1] = ssd_align(sizeof(float) * b * nc * s.heads * s.head_dim * s.state);
  sizes[2] = ssd_align(sizeof(float) * b * nc * s.groups * s.chunk * s.chunk);
  sizes[3] = ssd_align(sizeof(float) * b * s.len * s.heads);
}

// Consecutive pieces of `count` sizes from `base`.
inline void ssd_pieces(void* base, const size_t* sizes, int count, float** out) {
  char* p = static_cast<char*>(base);
  for (int i = 0; i < count; ++i) {
    out[i] = reinterpret_cast<float*>(p);
    p += sizes[i];
  }
}

inline SsdWorkspace ssd_workspace(const SsdShape& s, void* base) {
  size_t sizes[kSsdPieces];
  ssd_piece_sizes(s, sizes);
  float* piece[kSsdPieces];
  ssd_pieces(base, sizes, kSsdPieces, piece);
  return {piece[0], piece[1], piece[2], piece[3]};
}

// The backward's replay of the forward on the tensor-core path: instead of
// y, the dots dy . y per token, head and 64-wide slice of the head dimension.
struct SsdDots {
  const float* dy = nullptr;
  float* yy = nullptr;
};

// dt as the launcher passed it (SsdDt), typed.
template <typename TD>
struct SsdDtIn {
  const TD* values;
  int64_t batch_stride, token_stride;
  const float* bias;
  bool softplus;
  float min;
};

template <typename TD>
SsdDtIn<TD> ssd_dt_in(const SsdDt& d) {
  return {static_cast<const TD*>(d.values), d.batch_stride, d.token_stride, d.bias, d.softplus, d.min};
}

// values + bias at (bi, tok, h): softplus's argument, or dt itself.
template <typename TD>
__device__ __forceinline__ float ssd_dt_arg(const SsdDtIn<TD>& in, int64_t bi, int64_t tok, int64_t h) {
  const float v = to_f32(in.values[bi * in.batch_stride + tok * in.token_stride + h]);
  return in.bias ? v + in.bias[h] : v;
}

// torch.nn.functional.softplus (beta 1, threshold 20) then clamp_min; NaN stays NaN.
__device__ __forceinline__ float ssd_softplus_min(float u, float lo) {
  const float sp = u > 20.0f ? u : log1pf(expf(u));
  return sp < lo ? lo : sp;
}

// d dt / d arg, as autograd of softplus then clamp_min gives it.
// clamp_min passes the gradient where its input >= min.
__device__ __forceinline__ float ssd_softplus_min_grad(float u, float lo) {
  if (u > 20.0f) return u >= lo ? 1.0f : 0.0f;
  const float z = expf(u);
  return log1pf(z) >= lo ? z / (z + 1.0f) : 0.0f;
}

// A chunk block's coordinates: blockIdx.x = chunk + chunks * sequence,
// blockIdx.y = head (or group); its tokens are [t0, t0 + len).
struct SsdChunk {
  int64_t nc, c, bi, y, t0, len;
};

__device__ __forceinline__ SsdChunk ssd_chunk(const SsdShape& s) {
  SsdChunk k;
  k.nc = ssd_chunks(s);
  k.c = blockIdx.x % k.nc;
  k.bi = blockIdx.x / k.nc;
  k.y = blockIdx.y;
  k.t0 = k.c * s.chunk;
  k.len = min(s.chunk, s.len - k.t0);
  return k;
}

// Where (sequence bi, head h, chunk c) starts in the cumsums [b, H, nc, chunk]
// and in the states [b, nc, H, P, N].
__host__ __device__ inline int64_t cumsum_at(const SsdShape& s, int64_t nc, int64_t bi, int64_t h, int64_t c) {
  return ((bi * s.heads + h) * nc + c) * s.chunk;
}
__host__ __device__ inline int64_t state_at(const SsdShape& s, int64_t nc, int64_t bi, int64_t c, int64_t h) {
  return ((bi * nc + c) * s.heads + h) * s.head_dim * s.state;
}

// Grid over (b, h, chunk) threads for step 1.
inline unsigned ssd_cumsum_blocks(const SsdShape& s) {
  return static_cast<unsigned>((s.batch * s.heads * ssd_chunks(s) + kSsdThreads - 1) / kSsdThreads);
}

template <typename TD>
__global__ void ssd_cumsum_kernel(SsdShape s, SsdDtIn<TD> in, const float* __restrict__ A,
                                  float* __restrict__ dt, float* __restrict__ cumsum) {
  const int64_t nc = ssd_chunks(s);
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= s.batch * s.heads * nc) return;
  const int64_t c = id % nc, h = id / nc % s.heads, bi = id / (nc * s.heads);
  const int64_t t0 = c * s.chunk, len = min(s.chunk, s.len - t0);
  const float a = A[h];
  float run = 0.0f;
  float* out = cumsum + id * s.chunk;  // [b, H, nc, chunk]: id = (bi * H + h) * nc + c
  for (int64_t t = 0; t < len; ++t) {
    const float u = ssd_dt_arg(in, bi, t0 + t, h);
    const float d = in.softplus ? ssd_softplus_min(u, in.min) : u;
    dt[(bi * s.len + t0 + t) * s.heads + h] = d;
    run += d * a;
    out[t] = run;
  }
}

// Block (c + nc * bi, h): S[p, n] over the chunk's tokens.
template <typename T>
__global__ void ssd_chunk_state_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                       const T* __restrict__ B, const float* __restrict__ cumsum,
                                       float* __restrict__ states) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, h = k.y, g = h / (s.heads / s.groups), t0 = k.t0, len = k.len;
  const float* a = cumsum + cumsum_at(s, nc, bi, h, c);
  const float a_last = a[len - 1];
  float* out = states + state_at(s, nc, bi, c, h);
  for (int64_t e = threadIdx.x; e < s.head_dim * s.state; e += blockDim.x) {
    const int64_t p = e / s.state, n = e % s.state;
    float acc = 0.0f;
    for (int64_t t = 0; t < len; ++t) {
      const int64_t tok = t0 + t;
      const float w = expf(a_last - a[t]) * dt[(bi * s.len + tok) * s.heads + h];
      acc += w * to_f32(x[bi * s.x_batch_stride + tok * s.x_token_stride + h * s.head_dim + p]) *
             to_f32(B[bi * s.b_batch_stride + tok * s.b_token_stride + g * s.state + n]);
    }
    out[e] = acc;
  }
}

// Block (bi, h): runs the recurrence over chunks, left to right (forward:
// leaves in `states` the state ENTERING each chunk) or right to left (the
// backward's reverse states: what enters each chunk from later ones, decayed
// to its last token). Either way run' = decay(chunk) run + chunk's own.
__global__ void ssd_state_passing_kernel(SsdShape s, const float* __restrict__ cumsum, float* __restrict__ states,
                                         bool reverse) {
  const int64_t nc = ssd_chunks(s);
  const int64_t bi = blockIdx.x, h = blockIdx.y;
  for (int64_t e = threadIdx.x; e < s.head_dim * s.state; e += blockDim.x) {
    float run = 0.0f;
    for (int64_t i = 0; i < nc; ++i) {
      const int64_t c = reverse ? nc - 1 - i : i;
      const int64_t len = min(s.chunk, s.len - c * s.chunk);
      const float decay = expf(cumsum[cumsum_at(s, nc, bi, h, c) + len - 1]);
      float* slot = states + state_at(s, nc, bi, c, h) + e;
      const float chunk_state = *slot;
      *slot = run;
      run = run * decay + chunk_state;
    }
  }
}

// Block (c + nc * bi, g): CB[t, s] = C[t] . B[s] for s <= t.
template <typename T>
__global__ void ssd_chunk_cb_kernel(SsdShape s, const T* __restrict__ B, const T* __restrict__ C,
                                    float* __restrict__ cb) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, g = k.y, t0 = k.t0, len = k.len;
  float* out = cb + ((bi * nc + c) * s.groups + g) * s.chunk * s.chunk;
  for (int64_t e = threadIdx.x; e < len * len; e += blockDim.x) {
    const int64_t t = e / len, u = e % len;
    if (u > t) continue;
    const T* ct = C + bi * s.c_batch_stride + (t0 + t) * s.c_token_stride + g * s.state;
    const T* bu = B + bi * s.b_batch_stride + (t0 + u) * s.b_token_stride + g * s.state;
    float acc = 0.0f;
    for (int64_t n = 0; n < s.state; ++n) acc += to_f32(ct[n]) * to_f32(bu[n]);
    out[t * s.chunk + u] = acc;
  }
}

// Block (c + nc * bi, h): y[t, p] for the chunk's tokens.
template <typename T>
__global__ void ssd_chunk_output_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                        const T* __restrict__ C, const float* __restrict__ D,
                                        const float* __restrict__ cumsum, const float* __restrict__ states,
                                        const float* __restrict__ cb, float* __restrict__ y) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, h = k.y, g = h / (s.heads / s.groups), t0 = k.t0, len = k.len;
  const float* a = cumsum + cumsum_at(s, nc, bi, h, c);
  const float* entering = states + state_at(s, nc, bi, c, h);
  const float* cbc = cb + ((bi * nc + c) * s.groups + g) * s.chunk * s.chunk;
  const float d = D ? D[h] : 0.0f;
  for (int64_t e = threadIdx.x; e < len * s.head_dim; e += blockDim.x) {
    const int64_t t = e / s.head_dim, p = e % s.head_dim;
    const int64_t tok = t0 + t;
    float acc = 0.0f;
    for (int64_t u = 0; u <= t; ++u) {
      const int64_t tu = t0 + u;
      acc += cbc[t * s.chunk + u] * expf(a[t] - a[u]) * dt[(bi * s.len + tu) * s.heads + h] *
             to_f32(x[bi * s.x_batch_stride + tu * s.x_token_stride + h * s.head_dim + p]);
    }
    const T* ct = C + bi * s.c_batch_stride + tok * s.c_token_stride + g * s.state;
    float from_state = 0.0f;
    for (int64_t n = 0; n < s.state; ++n) from_state += entering[p * s.state + n] * to_f32(ct[n]);
    const float xv = to_f32(x[bi * s.x_batch_stride + tok * s.x_token_stride + h * s.head_dim + p]);
    y[((bi * s.len + tok) * s.heads + h) * s.head_dim + p] = acc + expf(a[t]) * from_state + d * xv;
  }
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
