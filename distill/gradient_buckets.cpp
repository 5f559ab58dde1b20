#include "gradient_buckets.h"

namespace minipuzzle {

torch::ScalarType wire_dtype(torch::ScalarType t) {
  if (c10::isFloatingType(t) && c10::elementSize(t) < 4) return torch::kFloat32;
  return t;
}

std::vector<Bucket> make_buckets(const std::vector<torch::Tensor>& tensors, int64_t bytes) {
  std::vector<Bucket> out;
  int64_t fill = 0;
  for (const auto& t : tensors) {
    const auto wire = wire_dtype(t.scalar_type());
    const int64_t size = t.numel() * static_cast<int64_t>(c10::elementSize(wire));
    if (out.empty() || out.back().wire != wire || out.back().tensors.front().device() != t.device() ||
        (fill > 0 && fill + size > bytes)) {
      out.push_back({{}, wire});
      fill = 0;
    }
    out.back().tensors.push_back(t);
    fill += size;
  }
  return out;
}

torch::Tensor flatten(const Bucket& b, torch::Device device) {
  std::vector<torch::Tensor> parts;
  parts.reserve(b.tensors.size());
  for (const auto& t : b.tensors) parts.push_back(t.detach().reshape({-1}).to(device, b.wire));
  return torch::cat(parts);
}

void unflatten(const Bucket& b, const torch::Tensor& flat) {
  int64_t off = 0;
  for (const auto& t : b.tensors) {
    const int64_t n = t.numel();
    t.detach().copy_(flat.narrow(0, off, n).view(t.sizes()));  // casts back once
    off += n;
  }
}

}  // namespace minipuzzle
