// Tensors grouped into flat buffers for collectives (internal to distill/):
// the broadcast, the gradient all-reduce and its overlapped form cut the same
// buckets, so their results agree bit for bit.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace minipuzzle {

// The dtype a tensor travels in: fp32 for floating types narrower than fp32
// (exact for broadcast, fp32 accumulation for allreduce), else its own.
torch::ScalarType wire_dtype(torch::ScalarType t);

// Consecutive tensors of one (device, wire dtype), about `bytes` per bucket.
struct Bucket {
  std::vector<torch::Tensor> tensors;
  torch::ScalarType wire;
};
std::vector<Bucket> make_buckets(const std::vector<torch::Tensor>& tensors, int64_t bytes);

// The bucket's tensors as one flat wire-dtype buffer on `device`, and back
// (cast to each tensor's dtype once).
torch::Tensor flatten(const Bucket& b, torch::Device device);
void unflatten(const Bucket& b, const torch::Tensor& flat);

}  // namespace minipuzzle
