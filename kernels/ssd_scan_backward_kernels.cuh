// SSD backward, chunked like the forward (ssd_scan_kernels.cuh), for the
// loss sum(dy * y). With xdt_s = dt_s x_s and a the running sum of dt A:
//   dxdt_s = sum_{t>=s} (C_t.B_s) e^{a_t - a_s} dy_t         (a reverse-time scan)
//   dx_s   = dt_s dxdt_s + D dy_s
//   dB_s   = sum_heads sum_p xdt_s[p] g_s[p, :],  g_s = sum_{t>=s} e^{a_t-a_s} dy_t C_t^T
//            (within a chunk: sum_{t>=s} W[t, s] C_t, W summed over the group's
//            heads, since C belongs to the group; likewise for dC)
//   dC_t   = sum_heads sum_p dy_t[p] h_t[p, :],   h_t the forward state at t
//   da_t   = dy_t . (y_t - D x_t) - xdt_t . dxdt_t      (d loss / d a_t)
//   ddt_r  = x_r . dxdt_r + A sum_{t>=r} da_t,  dA = sum_r dt_r sum_{t>=r} da_t,
//   dD     = sum_t dy_t . x_t.
// Steps after the forward ones (which leave cumsums, entering states, C.B);
// here on CUDA cores in fp32 (R1, R3, R4, R5 for bf16: ssd_scan_tensor_core_kernels.cuh):
//   R1 reverse chunk states  Q_c = sum_{t in c} e^{a_loc[t]} dy_t C_t^T      block per (b, c, h)
//   R2 reverse passing       G_c = sum over later chunks (state entering c from the right;
//                            ssd_state_passing_kernel right to left)
//   R3 dxdt and dx                                                           block per (b, c, h)
//   R4 W[t, s] = sum over the group's heads of e^{a[t]-a[s]} dt_s (x_s . dy_t),
//      s <= t                                                               block per (b, c, g)
//   R5 dB, dC (sums over the heads of a group, no atomics)                   block per (b, c, g)
//   R6 per-token dots da, x.dxdt, dy.x                                        one thread per (b, t, h)
//   R7 reverse cumsum of da: ddt, dA, dD; through softplus and clamp to the
//      raw dt, summed over tokens for ddt_bias                                one thread per (b, h)
#pragma once

#include "ssd_scan_kernels.cuh"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

// The tensor-core path (bf16, shape.tensor_cores) never writes y_ssm and
// dxdt: the epilogues of its output and dx GEMMs reduce them over each
// 64-wide slice of the head dimension straight into the per-token dots
// (yy, xd, dyx partials [b, L, H, slices]).
inline bool ssd_tensor_core_path(const SsdShape& s, DType dtype) { return dtype == DType::BF16 && s.tensor_cores; }
__host__ __device__ inline int64_t ssd_head_slices(const SsdShape& s) {
  return (s.head_dim + 63) / 64;  // block_gemm's column tile (static_assert in ssd_scan_tensor_core_kernels.cuh)
}

struct SsdBackwardWorkspace {
  SsdWorkspace fwd;
  float *y_ssm, *rstates, *w, *dxdt, *da, *xdot, *dyx, *yy_part, *xd_part, *dyx_part;
};

constexpr int kSsdBackwardPieces = kSsdPieces + 10;

inline void ssd_backward_piece_sizes(const SsdShape& s, DType dtype, size_t sizes[kSsdBackwardPieces]) {
  ssd_piece_sizes(s, sizes);
  const size_t nc = static_cast<size_t>(ssd_chunks(s)), b = static_cast<size_t>(s.batch);
  const size_t tokens = b * static_cast<size_t>(s.len) * s.heads;
  const bool tc = ssd_tensor_core_path(s, dtype);
  size_t* own = sizes + kSsdPieces;
  own[0] = tc ? 0 : ssd_align(sizeof(float) * tokens * s.head_dim);            // y without D
  own[1] = ssd_align(sizeof(float) * b * nc * s.heads * s.head_dim * s.state);  // reverse states
  own[2] = ssd_align(sizeof(float) * b * nc * s.groups * s.chunk * s.chunk);    // W per group
  own[3] = tc ? 0 : ssd_align(sizeof(float) * tokens * s.head_dim);            // dxdt
  own[4] = own[5] = own[6] = ssd_align(sizeof(float) * tokens);                // da, x.dxdt, dy.x
  own[7] = own[8] = own[9] = tc ? ssd_align(sizeof(float) * tokens * ssd_head_slices(s)) : 0;  // partials
}

inline SsdBackwardWorkspace ssd_backward_workspace(const SsdShape& s, DType dtype, void* base) {
  size_t sizes[kSsdBackwardPieces];
  ssd_backward_piece_sizes(s, dtype, sizes);
  float* piece[kSsdBackwardPieces];
  ssd_pieces(base, sizes, kSsdBackwardPieces, piece);
  float** own = piece + kSsdPieces;
  return {{piece[0], piece[1], piece[2], piece[3]}, own[0], own[1], own[2], own[3], own[4], own[5], own[6],
          own[7], own[8], own[9]};
}

// Element offsets in the packed x / B / C layouts and the dense [b, L, H] and
// [b, L, H, P] ones.
__host__ __device__ inline int64_t x_at(const SsdShape& s, int64_t bi, int64_t tok, int64_t h, int64_t p) {
  return bi * s.x_batch_stride + tok * s.x_token_stride + h * s.head_dim + p;
}
__host__ __device__ inline int64_t bh_at(const SsdShape& s, int64_t bi, int64_t tok, int64_t h) {
  return (bi * s.len + tok) * s.heads + h;
}

// R1. Block (c + nc * bi, h).
template <typename T>
__global__ void ssd_reverse_chunk_state_kernel(SsdShape s, const float* __restrict__ dy, const T* __restrict__ C,
                                               const float* __restrict__ cumsum, float* __restrict__ rstates) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, h = k.y, g = h / (s.heads / s.groups), t0 = k.t0, len = k.len;
  const float* a = cumsum + cumsum_at(s, nc, bi, h, c);
  float* out = rstates + state_at(s, nc, bi, c, h);
  for (int64_t e = threadIdx.x; e < s.head_dim * s.state; e += blockDim.x) {
    const int64_t p = e / s.state, n = e % s.state;
    float acc = 0.0f;
    for (int64_t t = 0; t < len; ++t) {
      const int64_t tok = t0 + t;
      acc += expf(a[t]) * dy[bh_at(s, bi, tok, h) * s.head_dim + p] *
             to_f32(C[bi * s.c_batch_stride + tok * s.c_token_stride + g * s.state + n]);
    }
    out[e] = acc;
  }
}

// R3. Block (c + nc * bi, h): dxdt and dx for the chunk's tokens.
template <typename T>
__global__ void ssd_dxdt_kernel(SsdShape s, const float* __restrict__ dt, const T* __restrict__ B,
                                const float* __restrict__ D, const float* __restrict__ dy,
                                const float* __restrict__ cumsum, const float* __restrict__ rstates,
                                const float* __restrict__ cb, float* __restrict__ dxdt, float* __restrict__ dx) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, h = k.y, g = h / (s.heads / s.groups), t0 = k.t0, len = k.len;
  const float* a = cumsum + cumsum_at(s, nc, bi, h, c);
  const float* from_right = rstates + state_at(s, nc, bi, c, h);
  const float* cbc = cb + ((bi * nc + c) * s.groups + g) * s.chunk * s.chunk;
  const float d = D ? D[h] : 0.0f;
  for (int64_t e = threadIdx.x; e < len * s.head_dim; e += blockDim.x) {
    const int64_t u = e / s.head_dim, p = e % s.head_dim, tok = t0 + u;
    float acc = 0.0f;
    for (int64_t t = u; t < len; ++t)
      acc += cbc[t * s.chunk + u] * expf(a[t] - a[u]) * dy[bh_at(s, bi, t0 + t, h) * s.head_dim + p];
    const T* bu = B + bi * s.b_batch_stride + tok * s.b_token_stride + g * s.state;
    float right = 0.0f;
    for (int64_t n = 0; n < s.state; ++n) right += to_f32(bu[n]) * from_right[p * s.state + n];
    acc += expf(a[len - 1] - a[u]) * right;
    const int64_t o = bh_at(s, bi, tok, h) * s.head_dim + p;
    dxdt[o] = acc;
    dx[o] = dt[bh_at(s, bi, tok, h)] * acc + d * dy[o];
  }
}

// Where W of (sequence bi, chunk c, group g) starts: [b, nc, G, chunk, chunk].
__host__ __device__ inline int64_t w_at(const SsdShape& s, int64_t nc, int64_t bi, int64_t c, int64_t g) {
  return ((bi * nc + c) * s.groups + g) * s.chunk * s.chunk;
}

// R4. Block (c + nc * bi, g): W[t, u] for u <= t, summed over the group's heads.
template <typename T>
__global__ void ssd_w_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                             const float* __restrict__ dy, const float* __restrict__ cumsum, float* __restrict__ w) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, g = k.y, t0 = k.t0, len = k.len, per_group = s.heads / s.groups;
  float* out = w + w_at(s, nc, bi, c, g);
  for (int64_t e = threadIdx.x; e < len * len; e += blockDim.x) {
    const int64_t t = e / len, u = e % len;
    if (u > t) continue;
    float sum = 0.0f;
    for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
      const float* a = cumsum + cumsum_at(s, nc, bi, h, c);
      const float* dyt = dy + bh_at(s, bi, t0 + t, h) * s.head_dim;
      float dot = 0.0f;
      for (int64_t p = 0; p < s.head_dim; ++p) dot += to_f32(x[x_at(s, bi, t0 + u, h, p)]) * dyt[p];
      sum += expf(a[t] - a[u]) * dt[bh_at(s, bi, t0 + u, h)] * dot;
    }
    out[t * s.chunk + u] = sum;
  }
}

// R5. Block (c + nc * bi, g): dB and dC for the chunk's tokens, summed over
// the group's heads.
template <typename T>
__global__ void ssd_dbdc_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                const T* __restrict__ B, const T* __restrict__ C, const float* __restrict__ dy,
                                const float* __restrict__ cumsum, const float* __restrict__ states,
                                const float* __restrict__ rstates, const float* __restrict__ w,
                                float* __restrict__ dB, float* __restrict__ dC) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t nc = k.nc, c = k.c, bi = k.bi, g = k.y, t0 = k.t0, len = k.len, per_group = s.heads / s.groups;
  const float* wc = w + w_at(s, nc, bi, c, g);
  for (int64_t e = threadIdx.x; e < len * s.state; e += blockDim.x) {
    const int64_t j = e / s.state, n = e % s.state, tok = t0 + j;
    float db = 0.0f, dc = 0.0f;
    for (int64_t t = j; t < len; ++t)
      db += wc[t * s.chunk + j] * to_f32(C[bi * s.c_batch_stride + (t0 + t) * s.c_token_stride + g * s.state + n]);
    for (int64_t u = 0; u <= j; ++u)
      dc += wc[j * s.chunk + u] * to_f32(B[bi * s.b_batch_stride + (t0 + u) * s.b_token_stride + g * s.state + n]);
    for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
      const float* a = cumsum + cumsum_at(s, nc, bi, h, c);
      const int64_t state0 = state_at(s, nc, bi, c, h) + n;
      float x_right = 0.0f, dy_left = 0.0f;
      const float* dyj = dy + bh_at(s, bi, tok, h) * s.head_dim;
      for (int64_t p = 0; p < s.head_dim; ++p) {
        x_right += to_f32(x[x_at(s, bi, tok, h, p)]) * rstates[state0 + p * s.state];
        dy_left += dyj[p] * states[state0 + p * s.state];
      }
      db += expf(a[len - 1] - a[j]) * dt[bh_at(s, bi, tok, h)] * x_right;
      dc += expf(a[j]) * dy_left;
    }
    const int64_t o = ((bi * s.len + tok) * s.groups + g) * s.state + n;
    dB[o] = db;
    dC[o] = dc;
  }
}

// R6. One thread per (b, t, h).
template <typename T>
__global__ void ssd_token_dots_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                      const float* __restrict__ dy, const float* __restrict__ y_ssm,
                                      const float* __restrict__ dxdt, float* __restrict__ da,
                                      float* __restrict__ xdot, float* __restrict__ dyx) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= s.batch * s.len * s.heads) return;
  const int64_t h = id % s.heads, tok = id / s.heads % s.len, bi = id / (s.heads * s.len);
  float dyy = 0.0f, xd = 0.0f, dx_ = 0.0f;
  for (int64_t p = 0; p < s.head_dim; ++p) {
    const int64_t o = id * s.head_dim + p;
    const float xv = to_f32(x[x_at(s, bi, tok, h, p)]);
    dyy += dy[o] * y_ssm[o];
    xd += xv * dxdt[o];
    dx_ += dy[o] * xv;
  }
  da[id] = dyy - dt[id] * xd;
  xdot[id] = xd;
  dyx[id] = dx_;
}

// R6 on the tensor-core path: the same dots, summed from the partials.
__global__ void ssd_token_dots_from_partials_kernel(SsdShape s, const float* __restrict__ dt,
                                                    const float* __restrict__ yy_part,
                                                    const float* __restrict__ xd_part,
                                                    const float* __restrict__ dyx_part, float* __restrict__ da,
                                                    float* __restrict__ xdot, float* __restrict__ dyx) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= s.batch * s.len * s.heads) return;
  const int64_t slices = ssd_head_slices(s);
  float dyy = 0.0f, xd = 0.0f, dx_ = 0.0f;
  for (int64_t i = id * slices; i < (id + 1) * slices; ++i) {
    dyy += yy_part[i];
    xd += xd_part[i];
    dx_ += dyx_part[i];
  }
  da[id] = dyy - dt[id] * xd;
  xdot[id] = xd;
  dyx[id] = dx_;
}

inline unsigned ssd_token_blocks(const SsdShape& s) {
  return static_cast<unsigned>((s.batch * s.len * s.heads + kSsdThreads - 1) / kSsdThreads);
}
inline unsigned ssd_bh_blocks(const SsdShape& s) {
  return static_cast<unsigned>((s.batch * s.heads + kSsdThreads - 1) / kSsdThreads);
}

// R7. One thread per (b, h), tokens in reverse; dA, dD and ddt_bias summed
// over the batch with atomics (zeroed before).
template <typename TD>
__global__ void ssd_decay_grad_kernel(SsdShape s, const float* __restrict__ dt, SsdDtIn<TD> in,
                                      const float* __restrict__ A, const float* __restrict__ da,
                                      const float* __restrict__ xdot, const float* __restrict__ dyx,
                                      float* __restrict__ ddt, float* __restrict__ dA, float* __restrict__ dD,
                                      float* __restrict__ ddt_bias) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= s.batch * s.heads) return;
  const int64_t h = id % s.heads, bi = id / s.heads;
  const float a = A[h];
  float run = 0.0f, da_sum = 0.0f, dd_sum = 0.0f, bias_sum = 0.0f;
  for (int64_t tok = s.len - 1; tok >= 0; --tok) {
    const int64_t o = bh_at(s, bi, tok, h);
    run += da[o];
    float g = xdot[o] + a * run;  // d loss / d dt as used
    if (in.softplus) g *= ssd_softplus_min_grad(ssd_dt_arg(in, bi, tok, h), in.min);
    ddt[o] = g;
    bias_sum += g;
    da_sum += dt[o] * run;
    dd_sum += dyx[o];
  }
  atomicAdd(&dA[h], da_sum);
  if (dD) atomicAdd(&dD[h], dd_sum);
  if (ddt_bias) atomicAdd(&ddt_bias[h], bias_sum);
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
