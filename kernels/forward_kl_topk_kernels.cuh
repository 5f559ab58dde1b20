// A divergence against a top-k teacher (forward_kl_cuda.h), one block per
// row: mark the k ids in a shared bitmap; one pass over the student row for
// the log-sum-exp of all logits and of the unmarked ones (the rest) and its
// argmax; one pass over the k teacher values; the divergence over k + 1
// buckets; then the gradient. Forward KL: q_v - p_i at the k ids,
// q_v - p_rest q_v / q_rest elsewhere (the ratio as exp(s'_v - lse_rest),
// stable for a tiny rest). Reverse KL and JSD: q_v h_b(v), h_b from the
// bucket terms (jsd_terms, forward_kl_kernels.cuh) and their sums.
// Kernel bodies, shared by the launcher (forward_kl.cu) and the CPU emulation tests.
#pragma once

#include "device_math.cuh"
#include "forward_kl_cuda.h"
#include "forward_kl_kernels.cuh"  // jsd_terms

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kKlTopkThreads = 512;

struct TopkRowStats {
  float m_all, z_all, m_rest, z_rest;  // online softmax of every student logit / of the unmarked ones
  float best;                          // argmax value
  float pad;
  int64_t best_at;                     // argmax index (a vocabulary id, or a position among the k)
};

__device__ __forceinline__ void merge_topk(TopkRowStats& a, const TopkRowStats& b) {
  float unused = 0.0f;
  merge_softmax(a.m_all, a.z_all, unused, b.m_all, b.z_all, 0.0f);
  merge_softmax(a.m_rest, a.z_rest, unused, b.m_rest, b.z_rest, 0.0f);
  merge_argmax(a.best, a.best_at, b.best, b.best_at);
}

__device__ __forceinline__ TopkRowStats empty_topk_stats(int64_t no_index) {
  return TopkRowStats{-FLT_MAX, 0.0f, -FLT_MAX, 0.0f, -FLT_MAX, 0.0f, no_index};
}

// One bucket's share of the divergence, and for reverse KL and JSD
// a = dD/dq_b - 1 (JSD: 2 dD/dq_b - 1) and q_b a.
struct BucketTerms {
  float value, qa, a;
};

__device__ __forceinline__ float lse_of(float m, float z) { return z > 0.0f ? m + logf(z) : -INFINITY; }

__host__ __device__ inline size_t topk_bitmap_bytes(int64_t vocab) {
  return sizeof(unsigned) * static_cast<size_t>((vocab + 31) / 32);
}

template <typename TS>
__global__ void forward_kl_topk_kernel(const TS* __restrict__ student, const float* __restrict__ values,
                                       const int64_t* __restrict__ indices, const float* __restrict__ rest_lse,
                                       int64_t vocab, int64_t k, int64_t s_stride, float inv_t, float grad_scale,
                                       float* __restrict__ kl, TS* __restrict__ grad,
                                       int64_t* __restrict__ s_argmax, int64_t* __restrict__ t_argmax,
                                       Divergence divergence) {
  MINIPUZZLE_DYNAMIC_SHARED(unsigned, topk_bits);
  __shared__ TopkRowStats scratch[32];
  __shared__ float sums[32];
  const int64_t row = blockIdx.x;
  const TS* s_row = student + row * s_stride;
  const float* vals = values + row * k;
  const int64_t* ids = indices + row * k;
  for (int64_t w = threadIdx.x; w < (vocab + 31) / 32; w += blockDim.x) topk_bits[w] = 0u;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const int64_t v = ids[i];
    if (v >= 0 && v < vocab) atomicOr(&topk_bits[v >> 5], 1u << (v & 31));
  }
  __syncthreads();
  const auto marked = [&](int64_t v) { return (topk_bits[v >> 5] >> (v & 31)) & 1u; };

  // The student: every logit, the rest, the argmax.
  TopkRowStats st = empty_topk_stats(vocab);
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float s = to_f32(s_row[v]), sp = s * inv_t;
    const bool rest = !marked(v);
    merge_topk(st, TopkRowStats{sp, 1.0f, rest ? sp : -FLT_MAX, rest ? 1.0f : 0.0f, s, 0.0f, v});
  }
  st = block_reduce(st, merge_topk, scratch, empty_topk_stats(vocab));
  const float lse_s = lse_of(st.m_all, st.z_all), rest_s = lse_of(st.m_rest, st.z_rest);
  const int64_t student_best = st.best_at;

  // The teacher's k values: log-sum-exp and argmax (a position among the k).
  TopkRowStats tt = empty_topk_stats(k);
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x)
    merge_topk(tt, TopkRowStats{vals[i], 1.0f, -FLT_MAX, 0.0f, vals[i], 0.0f, i});
  tt = block_reduce(tt, merge_topk, scratch, empty_topk_stats(k));
  const float rest_t = rest_lse[row], top_t = lse_of(tt.m_all, tt.z_all);
  const float hi = fmaxf(top_t, rest_t);
  const float lse_t = hi == -INFINITY ? -INFINITY : hi + logf(expf(top_t - hi) + expf(rest_t - hi));

  // The divergence over the k + 1 buckets (the rest added by thread 0), and
  // for reverse KL and JSD sum_b q_b a_b (their gradient's centring term).
  const auto bucket = [&](float logp, float logq) {
    BucketTerms t{0.0f, 0.0f, 0.0f};
    if (divergence == Divergence::ForwardKl) {
      const float p = expf(logp);
      t.value = p > 0.0f ? p * (logp - logq) : 0.0f;
    } else if (divergence == Divergence::ReverseKl) {
      const float q = expf(logq);
      t.a = q > 0.0f ? logq - logp : 0.0f;
      t.value = t.qa = q * t.a;
    } else {
      const JsdTerms j = jsd_terms(logp, logq);
      t = BucketTerms{j.value, j.qa, j.a};
    }
    return t;
  };
  const float rest_logp = rest_t - lse_t, rest_logq = rest_s - lse_s;
  float part = 0.0f, part_qa = 0.0f;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const int64_t v = ids[i];
    if (v < 0 || v >= vocab) continue;
    const BucketTerms t = bucket(vals[i] - lse_t, to_f32(s_row[v]) * inv_t - lse_s);
    part += t.value;
    part_qa += t.qa;
  }
  if (threadIdx.x == 0) {
    const BucketTerms t = bucket(rest_logp, rest_logq);
    part += t.value;
    part_qa += t.qa;
  }
  const float d = block_sum(part, sums);
  const float sum_qa = divergence == Divergence::ForwardKl ? 0.0f : block_sum(part_qa, sums);
  if (threadIdx.x == 0) {
    kl[row] = d;
    if (s_argmax) s_argmax[row] = student_best;
    if (t_argmax) t_argmax[row] = tt.best_at < k ? ids[tt.best_at] : vocab;
  }
  if (!grad) return;
  // dD/ds'_v = q_v h_b(v): h = a - D (reverse KL), (a - sum_qa) / 2 (JSD).
  const auto centred = [&](float a) { return divergence == Divergence::ReverseKl ? a - d : 0.5f * (a - sum_qa); };
  const float h_rest = divergence == Divergence::ForwardKl ? 0.0f : centred(bucket(rest_logp, rest_logq).a);
  TS* g_row = grad + row * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    if (marked(v)) continue;
    const float sp = to_f32(s_row[v]) * inv_t;
    const float g = divergence == Divergence::ForwardKl ? expf(sp - lse_s) - expf(sp - rest_s + rest_logp)
                                                        : expf(sp - lse_s) * h_rest;
    g_row[v] = from_f32<TS>(grad_scale * g);
  }
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const int64_t v = ids[i];
    if (v < 0 || v >= vocab) continue;
    const float logq = to_f32(s_row[v]) * inv_t - lse_s, logp = vals[i] - lse_t;
    const float g = divergence == Divergence::ForwardKl ? expf(logq) - expf(logp)
                                                        : expf(logq) * centred(bucket(logp, logq).a);
    g_row[v] = from_f32<TS>(grad_scale * g);
  }
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
