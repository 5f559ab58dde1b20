// The SSD's per-chunk matrix products on tensor cores (block_gemm.cuh), for
// bf16 x, B, C: the same quantities as the CUDA-core kernels of steps 2, 4, 5
// (ssd_scan_kernels.cuh) and R1, R3, R4, R5 (ssd_scan_backward_kernels.cuh),
// written to the same workspace (except y in the backward's replay and dxdt,
// which only feed per-token dots: those come from row epilogues instead), so
// the other steps are shared. Each is one GEMM whose operands are built
// while staging:
//   2  states    S[p, n]  = sum_t (e^{a_last - a_t} dt_t x_t[p]) B_t[n]
//   4  CB        CB[t, u] = sum_n C_t[n] B_u[n]                      (u <= t tiles only)
//   5  output    y[t, p]  = sum_u (CB[t,u] e^{a_t - a_u} dt_u) x_u[p] + sum_n (e^{a_t} C_t[n]) H[p, n]
//   R1 rstates   Q[p, n]  = sum_t (e^{a_t} dy_t[p]) C_t[n]
//   R3 dxdt      dxdt[u, p] = sum_{t>=u} (CB[t,u] e^{a_t - a_u}) dy_t[p] + sum_n (e^{a_last - a_u} B_u[n]) Q'[p, n]
//   R4 W         W[t, u]  = sum_h e^{a_t - a_u} dt_u sum_p dy_t[p] x_u[p]  (u <= t tiles only;
//                one product per head of the group, summed in the epilogue)
//   R5 dB, dC    W against C (or B), plus per head the head dimension against
//                that head's state: one GEMM, K = tokens + heads x head_dim
// A sum over a second quantity is the same GEMM with a longer K (the two
// pieces side by side), so each output is written once, without atomics.
// Rows that a triangular mask zeroes are left out of K, not multiplied.
// Grid: (chunk + chunks * sequence, head or group, output tile).
#pragma once

#include "block_gemm.cuh"
#include "ssd_scan_backward_kernels.cuh"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

static_assert(kGemmThreads == kSsdThreads, "the SSD launches run block_gemm's block size");
static_assert(kGemmTileN == 64, "ssd_head_slices counts 64-wide slices of the head dimension");

// Output tiles of an [m x n] product and the (m0, n0) of tile z.
__host__ __device__ inline int64_t ssd_tiles(int64_t m, int64_t n) { return gemm_tiles(m) * gemm_tiles(n); }
__device__ __forceinline__ void ssd_tile(int64_t n, int64_t z, int64_t& m0, int64_t& n0) {
  m0 = z / gemm_tiles(n) * kGemmTileM;
  n0 = z % gemm_tiles(n) * kGemmTileN;
}

// Where token t of chunk k starts in x (head h), B and C (group g), and in the
// dense [b, L, H, P] tensors (dy).
struct SsdRows {
  const SsdShape& s;
  const SsdChunk& k;
  __device__ __forceinline__ int64_t x(int64_t t, int64_t h) const {
    return k.bi * s.x_batch_stride + (k.t0 + t) * s.x_token_stride + h * s.head_dim;
  }
  __device__ __forceinline__ int64_t b(int64_t t, int64_t g) const {
    return k.bi * s.b_batch_stride + (k.t0 + t) * s.b_token_stride + g * s.state;
  }
  __device__ __forceinline__ int64_t c(int64_t t, int64_t g) const {
    return k.bi * s.c_batch_stride + (k.t0 + t) * s.c_token_stride + g * s.state;
  }
  __device__ __forceinline__ int64_t dense(int64_t t, int64_t h) const { return bh_at(s, k.bi, k.t0 + t, h); }
};

// A block of step 5 or R3: head h's [chunk x P] output tile (m0, n0), with
// the head's cumsums a, its group's C.B block cb and its D; `rows` false for
// a tile past the chunk's last token (the whole block returns).
struct SsdHeadTile {
  int64_t h, g, m0, n0;
  const float *a, *cb;
  float d;
  bool rows;
};
__device__ __forceinline__ SsdHeadTile ssd_head_tile(const SsdShape& s, const SsdChunk& k, const float* cumsum,
                                                     const float* cb, const float* D) {
  SsdHeadTile t;
  t.h = k.y;
  t.g = t.h / (s.heads / s.groups);
  ssd_tile(s.head_dim, blockIdx.z, t.m0, t.n0);
  t.a = cumsum + cumsum_at(s, k.nc, k.bi, t.h, k.c);
  t.cb = cb + ((k.bi * k.nc + k.c) * s.groups + t.g) * s.chunk * s.chunk;
  t.d = D ? D[t.h] : 0.0f;
  t.rows = t.m0 < k.len;
  return t;
}

// 2. Block (c + nc * bi, h, tile of [P x N]).
template <typename T>
__global__ void ssd_chunk_state_tc_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                          const T* __restrict__ B, const float* __restrict__ cumsum,
                                          float* __restrict__ states) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t h = k.y, g = h / (s.heads / s.groups);
  const SsdRows at{s, k};
  const float* a = cumsum + cumsum_at(s, k.nc, k.bi, h, k.c);
  __shared__ float weight[kSsdMaxChunk];
  for (int64_t t = threadIdx.x; t < k.len; t += blockDim.x) weight[t] = expf(a[k.len - 1] - a[t]) * dt[at.dense(t, h)];
  __syncthreads();
  float* out = states + state_at(s, k.nc, k.bi, k.c, h);
  int64_t m0, n0;
  ssd_tile(s.state, blockIdx.z, m0, n0);
  block_gemm<T, kGemmSplitA>(
      m0, n0, s.head_dim, s.state, k.len, [&](int64_t p, int64_t t) { return weight[t] * to_f32(x[at.x(t, h) + p]); },
      [&](int64_t t, int64_t n) { return to_f32(B[at.b(t, g) + n]); },
      [&](int64_t p, int64_t n, float v) { out[p * s.state + n] = v; });
}

// 4. Block (c + nc * bi, g, tile of [chunk x chunk]); tiles wholly above the
// diagonal write nothing (nothing reads CB[t, u > t]).
template <typename T>
__global__ void ssd_chunk_cb_tc_kernel(SsdShape s, const T* __restrict__ B, const T* __restrict__ C,
                                       float* __restrict__ cb) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t g = k.y;
  const SsdRows at{s, k};
  int64_t m0, n0;
  ssd_tile(k.len, blockIdx.z, m0, n0);
  if (m0 >= k.len || n0 >= k.len || n0 > m0 + kGemmTileM - 1) return;  // whole block: before any barrier
  float* out = cb + ((k.bi * k.nc + k.c) * s.groups + g) * s.chunk * s.chunk;
  block_gemm<T, kGemmAKFast | kGemmBKFast>(
      m0, n0, k.len, k.len, s.state, [&](int64_t t, int64_t n) { return to_f32(C[at.c(t, g) + n]); },
      [&](int64_t n, int64_t u) { return to_f32(B[at.b(u, g) + n]); },
      [&](int64_t t, int64_t u, float v) {
        if (u <= t) out[t * s.chunk + u] = v;
      });
}

// 5. Block (c + nc * bi, h, tile of [chunk x P]). K: the tokens u that rows
// [m0, m0 + 64) see, then the state. With dots.dy (the backward's replay of
// the forward) y is not written: each row's dy . y over the tile's columns
// goes to dots.yy [b, L, H, slices] instead.
template <typename T>
__global__ void ssd_chunk_output_tc_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                           const T* __restrict__ C, const float* __restrict__ D,
                                           const float* __restrict__ cumsum, const float* __restrict__ states,
                                           const float* __restrict__ cb, float* __restrict__ y, SsdDots dots) {
  const SsdChunk k = ssd_chunk(s);
  const SsdRows at{s, k};
  const SsdHeadTile tile = ssd_head_tile(s, k, cumsum, cb, D);
  if (!tile.rows) return;
  const int64_t h = tile.h, g = tile.g, m0 = tile.m0, n0 = tile.n0;
  const float *a = tile.a, *cbc = tile.cb;
  const float d = tile.d;
  const float* entering = states + state_at(s, k.nc, k.bi, k.c, h);
  const int64_t seen = min(k.len, m0 + kGemmTileM);
  block_gemm<T, kGemmSplitA | kGemmSplitB | kGemmAKFast>(
      m0, n0, k.len, s.head_dim, seen + s.state,
      [&](int64_t t, int64_t j) {
        if (j >= seen) return expf(a[t]) * to_f32(C[at.c(t, g) + j - seen]);
        return j <= t ? cbc[t * s.chunk + j] * expf(a[t] - a[j]) * dt[at.dense(j, h)] : 0.0f;
      },
      [&](int64_t j, int64_t p) { return j < seen ? to_f32(x[at.x(j, h) + p]) : entering[p * s.state + j - seen]; },
      [&](int64_t t, int64_t p, float v) {
        if (!dots.dy) y[at.dense(t, h) * s.head_dim + p] = v + d * to_f32(x[at.x(t, h) + p]);
      },
      [&](int64_t t, const float* row, int64_t count) {
        if (!dots.dy) return;
        const float* dyt = dots.dy + at.dense(t, h) * s.head_dim + n0;
        float sum = 0.0f;
        for (int64_t j = 0; j < count; ++j) sum += dyt[j] * (row[j] + d * to_f32(x[at.x(t, h) + n0 + j]));
        dots.yy[at.dense(t, h) * ssd_head_slices(s) + n0 / kGemmTileN] = sum;
      });
}

// R1. Block (c + nc * bi, h, tile of [P x N]).
template <typename T>
__global__ void ssd_reverse_chunk_state_tc_kernel(SsdShape s, const float* __restrict__ dy, const T* __restrict__ C,
                                                  const float* __restrict__ cumsum, float* __restrict__ rstates) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t h = k.y, g = h / (s.heads / s.groups);
  const SsdRows at{s, k};
  const float* a = cumsum + cumsum_at(s, k.nc, k.bi, h, k.c);
  __shared__ float weight[kSsdMaxChunk];
  for (int64_t t = threadIdx.x; t < k.len; t += blockDim.x) weight[t] = expf(a[t]);
  __syncthreads();
  float* out = rstates + state_at(s, k.nc, k.bi, k.c, h);
  int64_t m0, n0;
  ssd_tile(s.state, blockIdx.z, m0, n0);
  block_gemm<T, kGemmSplitA>(
      m0, n0, s.head_dim, s.state, k.len,
      [&](int64_t p, int64_t t) { return weight[t] * dy[at.dense(t, h) * s.head_dim + p]; },
      [&](int64_t t, int64_t n) { return to_f32(C[at.c(t, g) + n]); },
      [&](int64_t p, int64_t n, float v) { out[p * s.state + n] = v; });
}

// R3. Block (c + nc * bi, h, tile of [chunk x P]). K: the tokens t >= m0
// that rows [m0, m0 + 64) see, then the state from the right. dxdt itself is
// not kept: each row's x . dxdt and dy . x over the tile's columns go to
// xd_part and dyx_part [b, L, H, slices].
template <typename T>
__global__ void ssd_dxdt_tc_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                   const T* __restrict__ B, const float* __restrict__ D, const float* __restrict__ dy,
                                   const float* __restrict__ cumsum, const float* __restrict__ rstates,
                                   const float* __restrict__ cb, float* __restrict__ dx, float* __restrict__ xd_part,
                                   float* __restrict__ dyx_part) {
  const SsdChunk k = ssd_chunk(s);
  const SsdRows at{s, k};
  const SsdHeadTile tile = ssd_head_tile(s, k, cumsum, cb, D);
  if (!tile.rows) return;
  const int64_t h = tile.h, g = tile.g, m0 = tile.m0, n0 = tile.n0;
  const float *a = tile.a, *cbc = tile.cb;
  const float d = tile.d;
  const float* from_right = rstates + state_at(s, k.nc, k.bi, k.c, h);
  const int64_t later = k.len - m0;  // tokens t in [m0, len)
  block_gemm<T, kGemmSplitA | kGemmSplitB>(
      m0, n0, k.len, s.head_dim, later + s.state,
      [&](int64_t u, int64_t j) {
        if (j >= later) return expf(a[k.len - 1] - a[u]) * to_f32(B[at.b(u, g) + j - later]);
        const int64_t t = m0 + j;
        return t >= u ? cbc[t * s.chunk + u] * expf(a[t] - a[u]) : 0.0f;
      },
      [&](int64_t j, int64_t p) {
        return j < later ? dy[at.dense(m0 + j, h) * s.head_dim + p] : from_right[p * s.state + j - later];
      },
      [&](int64_t u, int64_t p, float v) {
        const int64_t o = at.dense(u, h) * s.head_dim + p;
        dx[o] = dt[at.dense(u, h)] * v + d * dy[o];
      },
      [&](int64_t u, const float* row, int64_t count) {
        const T* xu = x + at.x(u, h) + n0;
        const float* dyu = dy + at.dense(u, h) * s.head_dim + n0;
        float xd = 0.0f, dyx = 0.0f;
        for (int64_t j = 0; j < count; ++j) {
          const float xv = to_f32(xu[j]);
          xd += xv * row[j];
          dyx += dyu[j] * xv;
        }
        const int64_t slot = at.dense(u, h) * ssd_head_slices(s) + n0 / kGemmTileN;
        xd_part[slot] = xd;
        dyx_part[slot] = dyx;
      });
}

// R4. Block (c + nc * bi, g, tile of [chunk x chunk]); u <= t only. One
// product per head of the group, each added in the epilogue (which gives
// every element to the same thread each time: no race, a fixed order).
template <typename T>
__global__ void ssd_w_tc_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                const float* __restrict__ dy, const float* __restrict__ cumsum, float* __restrict__ w) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t g = k.y, per_group = s.heads / s.groups;
  const SsdRows at{s, k};
  int64_t m0, n0;
  ssd_tile(k.len, blockIdx.z, m0, n0);
  if (m0 >= k.len || n0 >= k.len || n0 > m0 + kGemmTileM - 1) return;
  float* out = w + w_at(s, k.nc, k.bi, k.c, g);
  for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
    const float* a = cumsum + cumsum_at(s, k.nc, k.bi, h, k.c);
    const bool first = h == g * per_group;
    block_gemm<T, kGemmSplitA | kGemmAKFast | kGemmBKFast>(
        m0, n0, k.len, k.len, s.head_dim, [&](int64_t t, int64_t p) { return dy[at.dense(t, h) * s.head_dim + p]; },
        [&](int64_t p, int64_t u) { return to_f32(x[at.x(u, h) + p]); },
        [&](int64_t t, int64_t u, float v) {
          if (u > t) return;
          const float term = expf(a[t] - a[u]) * dt[at.dense(u, h)] * v;
          out[t * s.chunk + u] = first ? term : out[t * s.chunk + u] + term;
        });
  }
}

// R5. Block (c + nc * bi, g, tile): tiles [0, T) of [chunk x N] are dB, tiles
// [T, 2T) dC. K holds the chunk's tokens that the rows see (W is the group's
// sum over heads, and B, C belong to the group), then head by head the head
// dimension:
//   dB[j, n] = sum_{t>=j} W[t, j] C_t[n] + sum_h sum_p (e^{a_last - a_j} dt_j x_j[p]) Q'_h[p, n]
//   dC[j, n] = sum_{u<=j} W[j, u] B_u[n] + sum_h sum_p (e^{a_j} dy_j[p]) H_h[p, n]
template <typename T>
__global__ void ssd_dbdc_tc_kernel(SsdShape s, const T* __restrict__ x, const float* __restrict__ dt,
                                   const T* __restrict__ B, const T* __restrict__ C, const float* __restrict__ dy,
                                   const float* __restrict__ cumsum, const float* __restrict__ states,
                                   const float* __restrict__ rstates, const float* __restrict__ w,
                                   float* __restrict__ dB, float* __restrict__ dC) {
  const SsdChunk k = ssd_chunk(s);
  const int64_t g = k.y, per_group = s.heads / s.groups, h0 = g * per_group;
  const SsdRows at{s, k};
  const int64_t tiles = ssd_tiles(s.chunk, s.state);
  const bool is_db = blockIdx.z < tiles;
  int64_t m0, n0;
  ssd_tile(s.state, is_db ? blockIdx.z : blockIdx.z - tiles, m0, n0);
  if (m0 >= k.len) return;
  // Tokens of the first product: t in [m0, len) for dB, u in [0, min(len, m0 + 64)) for dC.
  const int64_t first = is_db ? m0 : 0, count = is_db ? k.len - m0 : min(k.len, m0 + kGemmTileM);
  const float* wg = w + w_at(s, k.nc, k.bi, k.c, g);
  const float* state_from = is_db ? rstates : states;
  // A is staged along K: most of K is the head dimension, contiguous in x and dy.
  block_gemm<T, kGemmSplitA | kGemmSplitB | kGemmAKFast>(
      m0, n0, k.len, s.state, count + per_group * s.head_dim,
      [&](int64_t j, int64_t kk) {
        if (kk < count) {
          const int64_t tok = first + kk;
          if (is_db) return tok >= j ? wg[tok * s.chunk + j] : 0.0f;
          return tok <= j ? wg[j * s.chunk + tok] : 0.0f;
        }
        const int64_t h = h0 + (kk - count) / s.head_dim, p = (kk - count) % s.head_dim;
        const float* a = cumsum + cumsum_at(s, k.nc, k.bi, h, k.c);
        return is_db ? expf(a[k.len - 1] - a[j]) * dt[at.dense(j, h)] * to_f32(x[at.x(j, h) + p])
                     : expf(a[j]) * dy[at.dense(j, h) * s.head_dim + p];
      },
      [&](int64_t kk, int64_t n) {
        if (kk >= count) {
          const int64_t h = h0 + (kk - count) / s.head_dim, p = (kk - count) % s.head_dim;
          return state_from[state_at(s, k.nc, k.bi, k.c, h) + p * s.state + n];
        }
        const int64_t tok = first + kk;
        return is_db ? to_f32(C[at.c(tok, g) + n]) : to_f32(B[at.b(tok, g) + n]);
      },
      [&](int64_t j, int64_t n, float v) {
        (is_db ? dB : dC)[((k.bi * s.len + k.t0 + j) * s.groups + g) * s.state + n] = v;
      });
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
