// Copies of host tensors to an accelerator that do not stall the host.
//
// A plain `t.to(cuda)` from pageable memory waits until everything queued
// on the stream before it, and the copy itself, is done: in a training loop
// that drains the GPU's queue once per micro-batch. Staged through pinned
// memory the copy joins the stream like a kernel and the host goes on
// queueing work.
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

}  // namespace minipuzzle
