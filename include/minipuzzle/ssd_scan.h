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

// The definition in LibTorch ops (autograd-capable).
// Memory: O(b * L * (H*T + H*P*N/T)) — never the [.., T, T, H, N] broadcasts.
torch::Tensor ssd_scan_reference(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                                 const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D,
                                 int64_t chunk_size);

// The plain sequential recurrence, O(L) steps: the test oracle for ssd_scan.
torch::Tensor ssd_scan_sequential(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                                  const torch::Tensor& B, const torch::Tensor& C, const torch::Tensor& D);

}  // namespace minipuzzle
