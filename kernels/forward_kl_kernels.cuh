// Pass 1 (per thread over a strided slice of the row, then merged across
// the block): running max and rescaled sum of exp for both distributions,
// the teacher-weighted sum of (t - s), and both argmaxes. Then
//   KL = E_p[t' - s'] - lse(t') + lse(s'),  t' = t / T, s' = s / T.
// Pass 2 writes grad = scale (exp(s' - lse_s) - exp(t' - lse_t)).
// Kernel bodies and their launch geometry, shared by the launcher (.cu) and
// the CPU emulation tests (tests/kernels/emulated_kernels_test.cpp).
#pragma once

#include "device_math.cuh"
#include "forward_kl_cuda.h"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kKlThreads = 512;

struct RowStats {
  float mt, zt, at;  // teacher max, sum exp(t' - mt), sum exp(t' - mt) (t' - s')
  float ms, zs;      // student max, sum exp(s' - ms)
  float bt, bs;      // argmax values (raw logits) of teacher and student
  int64_t it, is;    // argmax indices
};

__device__ __forceinline__ void merge(RowStats& s, const RowStats& o) {
  merge_softmax(s.mt, s.zt, s.at, o.mt, o.zt, o.at);
  float dummy = 0.0f;
  merge_softmax(s.ms, s.zs, dummy, o.ms, o.zs, 0.0f);
  merge_argmax(s.bt, s.it, o.bt, o.it);
  merge_argmax(s.bs, s.is, o.bs, o.is);
}

constexpr RowStats kEmptyRowStats{-FLT_MAX, 0.0f, 0.0f, -FLT_MAX, 0.0f, -FLT_MAX, -FLT_MAX, 0, 0};

template <typename TS, typename TT>
__global__ void forward_kl_kernel(const TS* student, const TT* __restrict__ teacher, int64_t vocab,
                                  int64_t s_stride, int64_t t_stride, float inv_t, float grad_scale,
                                  float* __restrict__ kl, TS* grad, int64_t* __restrict__ s_argmax,
                                  int64_t* __restrict__ t_argmax) {
  __shared__ RowStats scratch[32];
  __shared__ float lse[2];
  const int64_t row = blockIdx.x;
  const TS* s_row = student + row * s_stride;
  const TT* t_row = teacher + row * t_stride;

  RowStats st = kEmptyRowStats;
  st.it = st.is = vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += kKlThreads) {
    const float s = to_f32(s_row[v]), t = to_f32(t_row[v]);
    const float sp = s * inv_t, tp = t * inv_t;
    merge(st, RowStats{tp, 1.0f, tp - sp, sp, 1.0f, t, s, v, v});
  }
  RowStats empty = kEmptyRowStats;
  empty.it = empty.is = vocab;
  st = block_reduce(st, [](RowStats& acc, const RowStats& o) { merge(acc, o); }, scratch, empty);
  if (threadIdx.x == 0) {
    const float lse_t = st.mt + logf(st.zt), lse_s = st.ms + logf(st.zs);
    kl[row] = st.at / st.zt - lse_t + lse_s;
    if (s_argmax) s_argmax[row] = st.is;
    if (t_argmax) t_argmax[row] = st.it;
    lse[0] = lse_t;
    lse[1] = lse_s;
  }
  if (!grad) return;
  __syncthreads();
  const float lse_t = lse[0], lse_s = lse[1];
  TS* g_row = grad + row * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += kKlThreads) {
    const float sp = to_f32(s_row[v]) * inv_t, tp = to_f32(t_row[v]) * inv_t;
    g_row[v] = from_f32<TS>(grad_scale * (expf(sp - lse_s) - expf(tp - lse_t)));
  }
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
