// Mamba2 SSD chunked scan: the LibTorch reference that defines the op.
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// y[t] = C[t] . h[t] + D * x[t],  h[t] = exp(dt[t] * A) h[t-1] + dt[t] * B[t] x[t]^T
// computed chunk by chunk with matmuls (intra-chunk "attention", chunk
// states, inter-chunk state passing, state->output), in fp32.
//   x:  [b, L, H, P]   dt: [b, L, H] (already softplus'ed and clamped)
//   A:  [H] (negative) B, C: [b, L, G, N] (head h uses group h / (H/G))
//   D:  [H] or undefined
// L need not be a multiple of chunk_size. Returns y [b, L, H, P] in fp32.
// Autograd-capable. On CUDA tensors with ssd_scan_kernel_enabled()
// (kernel_dispatch.h) runs our forward and backward kernels; the reference
// otherwise.
torch::Tensor ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                       int64_t chunk_size);

// The Mamba2 mixer's dt step then the scan:
//   ssd_scan(x, softplus_dt_reference(dt_raw, dt_bias, dt_min), A, B, C, D)
// dt_raw [b, L, H] as in_proj produces it, dt_bias [H]. Where ssd_scan would
// run our kernels, they also do the dt step, in fp32 from the raw values
// (transformers' fused path does the same; its eager path, and our
// reference, work in dt_raw's dtype).
torch::Tensor ssd_scan_softplus_dt(const torch::Tensor& x, const torch::Tensor& dt_raw, const torch::Tensor& dt_bias,
                                   const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& C,
                                   const torch::Tensor& D, int64_t chunk_size, double dt_min);

// max(softplus(dt_raw + dt_bias), dt_min) in dt_raw's dtype, as transformers'
// NemotronH mixer computes it (softplus threshold 20).
torch::Tensor softplus_dt_reference(const torch::Tensor& dt_raw, const torch::Tensor& dt_bias, double dt_min);

// The definition in LibTorch ops (autograd-capable).
// Memory: O(b * L * (H*T + H*P*N/T)) — never the [.., T, T, H, N] broadcasts.
torch::Tensor ssd_scan_reference(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                 int64_t chunk_size);

// The plain sequential recurrence, O(L) steps: the test oracle for ssd_scan.
torch::Tensor ssd_scan_sequential(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D);

}  // namespace minipuzzle
