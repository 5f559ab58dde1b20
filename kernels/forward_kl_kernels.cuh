// Pass 1 (per thread over a strided slice of the row, then merged across
// the block): running max and rescaled sum of exp for both distributions,
// the teacher-weighted sum of (t' - s') and the student-weighted sum of
// (s' - t'), and both argmaxes; t' = t / T, s' = s / T. Then
//   forward KL = E_p[t' - s'] - lse(t') + lse(s'),
//   reverse KL = E_q[s' - t'] - lse(s') + lse(t').
// JSD needs log m per entry, so a second pass sums its terms and
// sum_u q_u a_u (a = log q - log m). The last pass writes the gradient.
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
  float ms, zs, as;  // student max, sum exp(s' - ms), sum exp(s' - ms) (s' - t')
  float bt, bs;      // argmax values (raw logits) of teacher and student
  int64_t it, is;    // argmax indices
};

__device__ __forceinline__ void merge(RowStats& s, const RowStats& o) {
  merge_softmax(s.mt, s.zt, s.at, o.mt, o.zt, o.at);
  merge_softmax(s.ms, s.zs, s.as, o.ms, o.zs, o.as);
  merge_argmax(s.bt, s.it, o.bt, o.it);
  merge_argmax(s.bs, s.is, o.bs, o.is);
}

constexpr RowStats kEmptyRowStats{-FLT_MAX, 0.0f, 0.0f, -FLT_MAX, 0.0f, 0.0f, -FLT_MAX, -FLT_MAX, 0, 0};

// JSD's per-entry terms from log p and log q: the divergence's share and
// q a, a = log q - log m (terms of an empty side vanish, as 0 log 0 = 0).
struct JsdTerms {
  float value, qa, a;
};
__device__ __forceinline__ JsdTerms jsd_terms(float logp, float logq) {
  const float hi = fmaxf(logp, logq), lo = fminf(logp, logq);
  const float logm = hi + log1pf(expf(lo - hi)) - 0.69314718f;  // log((p + q) / 2)
  const float p = expf(logp), q = expf(logq);
  const float a = q > 0.0f ? logq - logm : 0.0f;
  const float pa = p > 0.0f ? p * (logp - logm) : 0.0f;
  return {0.5f * (pa + q * a), q * a, a};
}

template <typename TS, typename TT>
__global__ void forward_kl_kernel(const TS* student, const TT* __restrict__ teacher, int64_t vocab,
                                  int64_t s_stride, int64_t t_stride, float inv_t, float grad_scale,
                                  float* __restrict__ kl, TS* grad, int64_t* __restrict__ s_argmax,
                                  int64_t* __restrict__ t_argmax, Divergence divergence) {
  __shared__ RowStats scratch[32];
  __shared__ float lse[3];  // teacher, student, the divergence
  const int64_t row = blockIdx.x;
  const TS* s_row = student + row * s_stride;
  const TT* t_row = teacher + row * t_stride;

  RowStats st = kEmptyRowStats;
  st.it = st.is = vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += kKlThreads) {
    const float s = to_f32(s_row[v]), t = to_f32(t_row[v]);
    const float sp = s * inv_t, tp = t * inv_t;
    merge(st, RowStats{tp, 1.0f, tp - sp, sp, 1.0f, sp - tp, t, s, v, v});
  }
  RowStats empty = kEmptyRowStats;
  empty.it = empty.is = vocab;
  st = block_reduce(st, [](RowStats& acc, const RowStats& o) { merge(acc, o); }, scratch, empty);
  if (threadIdx.x == 0) {
    const float lse_t = st.mt + logf(st.zt), lse_s = st.ms + logf(st.zs);
    const float d = divergence == Divergence::ReverseKl ? st.as / st.zs - lse_s + lse_t : st.at / st.zt - lse_t + lse_s;
    if (divergence != Divergence::Jsd) kl[row] = d;
    if (s_argmax) s_argmax[row] = st.is;
    if (t_argmax) t_argmax[row] = st.it;
    lse[0] = lse_t;
    lse[1] = lse_s;
    lse[2] = d;
  }
  __syncthreads();
  const float lse_t = lse[0], lse_s = lse[1];
  float d = lse[2], sum_qa = 0.0f;
  if (divergence == Divergence::Jsd) {  // its sums need log m per entry: one more pass
    float value = 0.0f, qa = 0.0f;
    for (int64_t v = threadIdx.x; v < vocab; v += kKlThreads) {
      const JsdTerms j = jsd_terms(to_f32(t_row[v]) * inv_t - lse_t, to_f32(s_row[v]) * inv_t - lse_s);
      value += j.value;
      qa += j.qa;
    }
    d = block_sum(value, reinterpret_cast<float*>(scratch));
    sum_qa = block_sum(qa, reinterpret_cast<float*>(scratch));
    if (threadIdx.x == 0) kl[row] = d;
  }
  if (!grad) return;
  TS* g_row = grad + row * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += kKlThreads) {
    const float logq = to_f32(s_row[v]) * inv_t - lse_s, logp = to_f32(t_row[v]) * inv_t - lse_t;
    const float q = expf(logq);
    float g;
    if (divergence == Divergence::ForwardKl) {
      g = q - expf(logp);
    } else if (divergence == Divergence::ReverseKl) {
      g = q > 0.0f ? q * (logq - logp - d) : 0.0f;
    } else {
      g = 0.5f * q * (jsd_terms(logp, logq).a - sum_qa);
    }
    g_row[v] = from_f32<TS>(grad_scale * g);
  }
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
