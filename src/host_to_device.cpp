#include "minipuzzle/host_to_device.h"

namespace minipuzzle {

torch::Tensor to_device_async(const torch::Tensor& host, const torch::Device& device) {
  if (!host.defined() || host.device() == device) return host;
  if (!device.is_cuda() || !host.device().is_cpu()) return host.to(device);
  // pin_memory() copies into a pinned block (or returns `host` when it is
  // pinned already); the copy from it is recorded on the current stream.
  return host.contiguous().pin_memory().to(device, /*non_blocking=*/true);
}

torch::Tensor host_buffer(at::IntArrayRef sizes, torch::ScalarType dtype, const torch::Device& device) {
  return torch::empty(sizes, torch::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda()));
}

void wait_for_device(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

}  // namespace minipuzzle
