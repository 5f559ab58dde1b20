#include "minipuzzle/training_activations.h"

#include "minipuzzle/errors.h"

#include <algorithm>
#include <cmath>

namespace minipuzzle {

// Every term below is "what keeps it": the autograd node of our forward
// (src/hybrid_lm.cpp, mamba2_mixer.cpp, attention.cpp, mlp.cpp, rms_norm.cpp,
// causal_conv1d.cpp, ssd_scan.cpp, src/cuda_ops/) that saves the tensor for
// backward. Views share their base's storage, so a saved view keeps the whole
// base alive (the in_proj output is the main case). Sizes are per token
// unless said otherwise; n = tokens of the micro-batch, e = compute dtype
// bytes, f = 4 (fp32).

const char* training_ops_name(TrainingOps ops) {
  switch (ops) {
    case TrainingOps::Reference: return "reference";
    case TrainingOps::CudaKernels: return "cuda-kernels";
    case TrainingOps::CudaKernelsSsd: return "cuda-kernels+ssd";
  }
  return "?";
}

namespace {

constexpr double f = 4;  // fp32 bytes

struct Sizes {
  double n, seqs, L, e;
  double D, I, C, di, H, P, G, N, T, K, F, Q, heads;
  double Lp, chunks;  // the SSD reference pads each sequence to whole chunks
  double E, k, Fe, Din, Fs, latent;  // MoE: experts, per token, expert width, expert input, shared width
};

Sizes sizes_of(const ModelConfig& c, const ActivationSetting& s) {
  Sizes z;
  z.seqs = static_cast<double>(s.sequences);
  z.L = static_cast<double>(s.seq_len);
  z.n = z.seqs * z.L;
  z.e = static_cast<double>(s.element_bytes);
  z.D = static_cast<double>(c.hidden_size);
  z.I = static_cast<double>(c.mamba_in_proj_dim());
  z.C = static_cast<double>(c.mamba_conv_dim());
  z.di = static_cast<double>(c.mamba_d_inner());
  z.H = static_cast<double>(c.mamba_num_heads);
  z.P = static_cast<double>(c.mamba_head_dim);
  z.G = static_cast<double>(c.n_groups);
  z.N = static_cast<double>(c.ssm_state_size);
  z.T = static_cast<double>(std::max<int64_t>(1, c.chunk_size));
  z.K = static_cast<double>(c.conv_kernel);
  z.F = static_cast<double>(c.intermediate_size);
  z.Q = static_cast<double>(c.attention_q_dim());
  z.heads = static_cast<double>(c.num_attention_heads);
  const int64_t chunk = std::max<int64_t>(1, c.chunk_size);
  const int64_t padded = (s.seq_len + chunk - 1) / chunk * chunk;
  z.Lp = static_cast<double>(padded);
  z.chunks = z.seqs * static_cast<double>(padded / chunk);
  z.E = static_cast<double>(c.n_routed_experts);
  z.k = static_cast<double>(c.num_experts_per_tok);
  z.Fe = static_cast<double>(c.moe_intermediate_size);
  z.Din = static_cast<double>(c.moe_latent_size > 0 ? c.moe_latent_size : c.hidden_size);
  z.Fs = static_cast<double>(c.moe_shared_expert_intermediate_size);
  z.latent = c.moe_latent_size > 0 ? 1 : 0;
  return z;
}

// rms_norm: the fp32 view of its input (the input itself in fp32, a copy in
// bf16) kept by pow and the rsqrt product, the normalised value in the input
// dtype kept by the weight product, rsqrt per token. The norm's output is
// kept by the mixer's first linear.
double pre_norm(const Sizes& z) { return z.n * (z.D * f + z.D * z.e + f) + z.n * z.D * z.e; }

// MLP: relu's output (relu keeps its result; square keeps its input, the same
// tensor) and the squared activation (down_proj keeps its input).
double mlp(const Sizes& z) { return 2 * z.n * z.F * z.e; }

// MoE (moe_mixer.cpp, moe_grouped_experts.cpp), n tokens each routed to k
// experts (n*k "slots"):
//   router: sigmoid keeps its fp32 scores [E]; gather its int64 indices [k];
//     the normalisation keeps the chosen weights [k] and their sum; in bf16
//     the router's linear keeps an fp32 copy of its input [D];
//   latent projections: fc1's output [Din] (the experts' input), fc2's input;
//   per slot, four int64 indices (the per-token expert order, the sort by
//     expert, the slot's token and its place in the sorted buffer) and what
//     the one grouped-experts node keeps: the expert's pre-activation [Fe]
//     and output [Din] in the compute dtype and the fp32 routing weight (its
//     input is the experts' input, kept already);
//   the shared expert as an MLP of width Fs (its input is the norm output).
double moe(const Sizes& z) {
  double router = z.E * f + z.k * (8 + f) + f;
  if (z.e < f) router += z.D * f;
  const double latent = z.latent * 2 * z.Din * z.e;
  const double slot = 4 * 8 + z.Fe * z.e + z.Din * z.e + f;
  return z.n * (router + latent + z.k * slot + 2 * z.Fs * z.e);
}

// Attention: q and the kv heads repeated to every query head (GQA repeats
// with a copy), all four kept by scaled_dot_product_attention with its
// output and log-sum-exp; the output's [b, L, heads, dim] layout is already
// contiguous, so o_proj keeps the same tensor.
double attention(const Sizes& z) { return 4 * z.n * z.Q * z.e + z.n * z.heads * f; }

// The SSD scan's reference (ssd_scan.cpp), over padded length Lp, in fp32:
//   decay = exp(seg) kept by exp, and M = C.B x decay kept by its matmul:
//     two [Lp, H, T] (the dominant term: T = 128 values per head and token);
//   C.B [Lp, G, T] kept by the product with decay;
//   four contiguous copies of B or C that matmul makes of the permuted views
//     (C.B takes both, the chunk states B, the state output C);
//   x*dt, matmul's copy of it for the intra-chunk product, the transposed
//     copy for the chunk states, and y_off: four [Lp, d_inner];
//   exp(to the chunk end) and exp(acum): two [Lp, H];
//   the state entering each chunk, kept by the recurrence's product, and
//     their stack, kept by the output matmul: two [chunks, H, P, N].
double ssd_reference(const Sizes& z) {
  const double np = z.seqs * z.Lp;
  return np * (2 * z.H * z.T * f + z.G * z.T * f + 4 * z.G * z.N * f + 4 * z.di * f + 2 * z.H * f) +
         z.chunks * (2 * z.H * z.P * z.N * f + z.H * f);
}

double mamba(const Sizes& z, TrainingOps ops) {
  // in_proj's output: z (gated norm) and xBC (conv) are views of it.
  double b = z.n * z.I * z.e;
  if (ops == TrainingOps::Reference) {
    // conv1d keeps its transposed input (the view above); SiLU keeps the
    // conv output, K-1 columns longer per sequence than L, and its own output
    // is what x, B and C are views of.
    b += z.seqs * (z.L + z.K - 1) * z.C * z.e + z.n * z.C * z.e;
  } else {
    b += z.n * z.C * z.e;  // the kernel keeps its input view; its output feeds the scan
  }
  if (ops != TrainingOps::CudaKernelsSsd) {
    // softplus and clamp_min keep their inputs; in bf16 the scan's fp32
    // copies of dt and x are kept by x*dt, dt*A and D*x.
    b += 2 * z.n * z.H * z.e;
    if (z.e < f) b += z.n * (z.H + z.di) * f;
    b += ssd_reference(z);
  }
  // Gated RMSNorm. The scan's fp32 output is kept by both versions.
  if (ops == TrainingOps::Reference) {
    // y, silu(z), y*silu(z) (pow and the rstd product), the normalised value
    // (the weight product), rstd; silu's fp32 z is a copy in bf16.
    b += 4 * z.n * z.di * f + z.n * z.G * f;
    if (z.e < f) b += z.n * z.di * f;
  } else {
    // The kernel keeps x, a contiguous copy of z (a strided view of in_proj's
    // output) and rstd.
    b += z.n * z.di * f + z.n * z.di * z.e + z.n * z.G * f;
  }
  // out_proj keeps its input, the norm's output in the compute dtype.
  b += z.n * z.di * z.e;
  return b;
}

}  // namespace

double block_saved_bytes(const ModelConfig& c, LayerType t, const ActivationSetting& s) {
  const Sizes z = sizes_of(c, s);
  switch (t) {
    case LayerType::Mamba: return pre_norm(z) + mamba(z, s.ops);
    case LayerType::Attention: return pre_norm(z) + attention(z);
    case LayerType::Mlp: return pre_norm(z) + mlp(z);
    case LayerType::Moe: return pre_norm(z) + moe(z);
  }
  return 0;
}

double block_input_bytes(const ModelConfig& c, const ActivationSetting& s) {
  const Sizes z = sizes_of(c, s);
  return z.n * z.D * z.e;
}

namespace {

// kernels/ssd_scan_backward_kernels.cuh's workspace (the forward's pieces,
// reverse states, the per-group token-pair weights, per-token dots; bf16
// takes the tensor-core path, which keeps no y or dxdt but per-slice
// partials) and the fp32 gradients it writes: dx, ddt, dB, dC.
double ssd_kernel_backward(const Sizes& z) {
  const double np = z.seqs * z.Lp, heads_tokens = z.n * z.H;
  const double forward = np * z.H * f + z.chunks * z.H * z.P * z.N * f + np * z.G * z.T * f + heads_tokens * f;
  const bool tensor_cores = z.e < f;
  const double slices = std::ceil(z.P / 64);
  double own = z.chunks * z.H * z.P * z.N * f + np * z.G * z.T * f + 3 * heads_tokens * f;
  own += tensor_cores ? 3 * heads_tokens * slices * f : 2 * heads_tokens * z.P * f;
  return forward + own + z.n * (z.di + z.H + 2 * z.G * z.N) * f;
}

}  // namespace

// Measured on the CPU (tests/distill/activation_memory_test.cpp): the peak
// of a block's backward above what its forward saved does not come from the
// scan's [T, T] chunks (their gradients replace saved tensors as backward
// frees them) but from the gated norm and the projections.
double block_backward_scratch_bytes(const ModelConfig& c, LayerType t, const ActivationSetting& s) {
  const Sizes z = sizes_of(c, s);
  const double through = 2 * z.n * z.D * z.e;  // the gradient coming in and the one going out
  switch (t) {
    case LayerType::Mlp:
      // The gradients of relu's output and of the square, and three [F, D]
      // matrices: the weight gradients before they are added into .grad, and
      // a transposed copy matmul makes.
      return through + 2 * z.n * z.F * z.e + 3 * z.F * z.D * z.e;
    case LayerType::Attention:
      return through + 4 * z.n * z.Q * z.e;  // the gradients of q, k, v and the output
    case LayerType::Mamba:
      if (s.ops == TrainingOps::CudaKernelsSsd)
        // The gated norm kernel's dy (fp32) and dz, then the scan kernel's
        // workspace and gradients.
        return z.n * z.D * z.e + z.n * z.di * (f + z.e) + ssd_kernel_backward(z);
      // Three fp32 [d_inner] gradients at once in the gated norm's backward
      // (of y, silu(z) and their product), in bf16 one more in the compute
      // dtype, and the [D] gradient coming in.
      return z.n * (z.D * z.e + z.di * (4 * f - z.e));
    case LayerType::Moe:
      // Fitted to the allocator (activation_memory_test.cpp): the grouped
      // experts' node returns every routed expert's weight gradients at once
      // (2 E Fe Din in the compute dtype; autograd adds them into .grad after
      // it returns), plus per token two fp32 [Din] (the routed sum's
      // gradient and the input's) and three fp32 values per slot (the
      // routing weight's gradient on its way back to the router).
      return through + 2 * z.E * z.Fe * z.Din * z.e + z.n * (2 * z.Din * f + 3 * z.k * f);
  }
  return 0;
}

double block_forward_transient_bytes(const ModelConfig& c, LayerType t, const ActivationSetting& s) {
  const Sizes z = sizes_of(c, s);
  switch (t) {
    case LayerType::Mlp:
      // up_proj's output lives beside relu's until relu returns, the moment
      // of the peak: one [F] more than the saved set, and the [D] output not
      // yet made.
      return z.n * (z.F - z.D) * z.e;
    case LayerType::Attention:
      return 2 * z.n * static_cast<double>(c.attention_kv_dim()) * z.e;  // k and v before the GQA repeat
    case LayerType::Mamba: {
      if (s.ops == TrainingOps::CudaKernelsSsd) {
        // The scan kernel's forward workspace (kernels/ssd_scan_kernels.cuh).
        const double np = z.seqs * z.Lp;
        return np * z.H * f + z.chunks * z.H * z.P * z.N * f + np * z.G * z.T * f + z.n * z.H * f;
      }
      // The reference scan: seg = acum_t - acum_s, a named [T, T] per head
      // and token alive until the scan returns; y's assembly from y_diag and
      // y_off, one more padded [d_inner]; with padding the unpadded copy of
      // x*dt; in bf16 the fp32 copies of z and x before the casts back.
      double b = z.seqs * z.Lp * (z.H * z.T * f + z.di * f);
      if (z.Lp > z.L) b += z.n * z.di * f;
      if (z.e < f) b += z.n * z.di * (f - z.e);
      return b;
    }
    case LayerType::Moe: {
      // Fitted to the allocator (activation_memory_test.cpp): the shared
      // expert's up_proj output beside relu's and k fp32 values per token;
      // in bf16 about E fp32 values per token more.
      double b = z.n * (z.Fs * z.e + z.k * f);
      if (z.e < f) b += z.n * z.E * f;
      return b;
    }
  }
  return 0;
}

double final_norm_saved_bytes(const ModelConfig& c, const ActivationSetting& s) {
  const Sizes z = sizes_of(c, s);
  return z.n * (z.D * f + z.D * z.e + f);
}

KdLossBytes kd_loss_bytes(const ModelConfig& student, const ActivationSetting& s, int64_t chunk_tokens,
                          int64_t cache_top_k) {
  const Sizes z = sizes_of(student, s);
  const double V = static_cast<double>(student.vocab_size);
  KdLossBytes k;
  // kd_loss.cpp: 0 = about 2^24 logits per chunk.
  int64_t rows = chunk_tokens > 0 ? chunk_tokens : std::max<int64_t>(1, (int64_t{1} << 24) / student.vocab_size);
  rows = std::min<int64_t>(rows, s.tokens());
  k.chunk_tokens = rows;
  // Until backward: d loss / d normed and d loss / d lm_head.weight, both in
  // the compute dtype (ChunkedKdFunction's saved data).
  k.held = z.n * z.D * z.e + V * z.D * z.e;
  // While it runs: the normed input, the fp32 accumulator of d lm_head (the
  // held copy itself in fp32), and one chunk's [rows, V] fp32 tensors: the
  // student's logits and log-probabilities, the teacher's (or the cache
  // rows scattered over the vocabulary), the divergence's terms and the
  // gradient; our fused CUDA kernels need only logits and gradient.
  const bool fused = s.ops != TrainingOps::Reference;
  const double per_chunk = fused ? 3 : (cache_top_k > 0 ? 6 : 8);
  k.chunk = z.n * z.D * z.e + (z.e < f ? V * z.D * f : 0) + static_cast<double>(rows) * V * f * per_chunk;
  return k;
}

}  // namespace minipuzzle
