// Copies between the host and an accelerator that do not stall the host.
//
// A plain `t.to(cuda)` from pageable memory, or a copy back into it, waits
// until everything queued on the stream before it is done: in a loop that
// drains the GPU's queue at every copy. Through pinned memory a copy joins
// the stream like a kernel and the host goes on queueing work; it waits
// once, where it needs the results (wait_for_device).
#pragma once

#include <torch/torch.h>

namespace minipuzzle {

// `host` on `device`. For a CUDA device the data goes through a pinned
// buffer with an asynchronous copy (LibTorch's caching host allocator keeps
// the buffer alive until the copy has run, so `host` may be freed or
// changed as soon as this returns; a `host` that is pinned already is read
// in place instead and must stay unchanged until the stream has run the
// copy). A CPU device, or a tensor already there, comes back unchanged.
torch::Tensor to_device_async(const torch::Tensor& host, const torch::Device& device);

// An empty host tensor that copies from `device` can fill without the host
// waiting (`dst.copy_(src, /*non_blocking=*/true)`): pinned when `device`
// is CUDA, ordinary memory otherwise. Read it only after wait_for_device.
torch::Tensor host_buffer(at::IntArrayRef sizes, torch::ScalarType dtype, const torch::Device& device);

// Returns when everything queued on `device` so far has run; no-op for the CPU.
void wait_for_device(const torch::Device& device);

}  // namespace minipuzzle
