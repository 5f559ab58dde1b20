#include "adamw_cuda.h"

#include <cstring>
#include <optional>

#include "cuda_launch.h"
#include "cuda_ops/adamw_slots.h"
#include "cuda_ops/cuda_ops.h"
#include "minipuzzle/host_to_device.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle {

// Host copy of the slots (to notice moved tensors) and the same table, with
// the chunk list, in device memory.
struct AdamWKernelState {
  std::vector<kernels::AdamWSlot> slots;
  int64_t num_chunks = 0;
  torch::Tensor table;     // bytes: slots, then chunk refs
  torch::Tensor partials;  // [num_chunks] fp32
  const kernels::AdamWSlot* device_slots() const {
    return reinterpret_cast<const kernels::AdamWSlot*>(table.data_ptr<uint8_t>());
  }
  const kernels::AdamWChunkRef* device_chunks() const {
    return reinterpret_cast<const kernels::AdamWChunkRef*>(table.data_ptr<uint8_t>() +
                                                           slots.size() * sizeof(kernels::AdamWSlot));
  }
};

namespace cuda_ops {

using torch::Tensor;

bool adamw_kernel_supported(const AdamWTensors& t) {
  std::optional<torch::Device> device;
  bool any = false;
  for (std::size_t i = 0; i < t.params.size(); ++i) {
    const Tensor& p = t.params[i];
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    any = true;
    if (!device) device = p.device();
    if (!p.is_cuda() || p.device() != *device || !cuda_kernel_dtype(p.scalar_type())) return false;
    if (g.device() != *device || g.scalar_type() != p.scalar_type() || !g.is_contiguous() || !p.is_contiguous())
      return false;
    for (const Tensor* s : {&t.masters[i], &t.exp_avgs[i], &t.exp_avg_sqs[i]})
      if (s->device() != *device || s->scalar_type() != torch::kFloat32 || !s->is_contiguous() ||
          s->numel() != p.numel())
        return false;
    if ((p.numel() + kernels::kAdamWChunk - 1) / kernels::kAdamWChunk > 0x7fffffff) return false;
    // An fp32 parameter is its own master (the kernel writes it once).
    if (p.scalar_type() == torch::kFloat32 && !t.masters[i].is_same(p)) return false;
  }
  return any;
}

std::shared_ptr<AdamWKernelState> make_adamw_kernel_state(const AdamWTensors& t) {
  auto state = std::make_shared<AdamWKernelState>();
  state->slots = adamw_slots(t);
  TORCH_CHECK(state->slots.size() <= 0x7fffffff, "fused AdamW: too many tensors");
  const std::vector<kernels::AdamWChunkRef> chunks =
      kernels::adamw_chunks(state->slots.data(), static_cast<int64_t>(state->slots.size()));
  TORCH_CHECK(chunks.size() <= 0x7fffffff, "fused AdamW: too many chunks");
  state->num_chunks = static_cast<int64_t>(chunks.size());
  const std::size_t slot_bytes = state->slots.size() * sizeof(kernels::AdamWSlot);
  const std::size_t chunk_bytes = chunks.size() * sizeof(kernels::AdamWChunkRef);
  Tensor host = torch::empty({static_cast<int64_t>(slot_bytes + chunk_bytes)}, torch::kUInt8);
  if (slot_bytes) std::memcpy(host.data_ptr<uint8_t>(), state->slots.data(), slot_bytes);
  if (chunk_bytes) std::memcpy(host.data_ptr<uint8_t>() + slot_bytes, chunks.data(), chunk_bytes);
  const torch::Device device = t.params.front().device();
  // Once per table (later steps reuse it), and without waiting for the device.
  state->table = to_device_async(host, device);
  state->partials = torch::empty({std::max<int64_t>(state->num_chunks, 1)},
                                 torch::TensorOptions().device(device).dtype(torch::kFloat32));
  return state;
}

bool adamw_kernel_state_matches(const AdamWKernelState& s, const AdamWTensors& t) {
  const std::vector<kernels::AdamWSlot> now = adamw_slots(t);
  if (now.size() != s.slots.size()) return false;
  for (std::size_t i = 0; i < now.size(); ++i) {
    const kernels::AdamWSlot &a = now[i], &b = s.slots[i];
    if (a.param != b.param || a.grad != b.grad || a.master != b.master || a.exp_avg != b.exp_avg ||
        a.exp_avg_sq != b.exp_avg_sq || a.numel != b.numel || a.dtype != b.dtype || a.decay != b.decay ||
        a.vector_ok != b.vector_ok)
      return false;
  }
  return true;
}

Tensor adamw_grad_sum_of_squares(AdamWKernelState& s) {
  const c10::cuda::CUDAGuard guard(s.table.device());
  // A new tensor per call: a caller may hold the last one while asking again.
  Tensor sum = torch::empty({}, torch::TensorOptions().device(s.table.device()).dtype(torch::kFloat64));
  check_launch(kernels::grad_sum_of_squares(s.device_slots(), s.device_chunks(), s.num_chunks,
                                            s.partials.data_ptr<float>(), sum.data_ptr<double>(),
                                            current_stream(s.table)),
               "grad_sum_of_squares");
  return sum;
}

void adamw_update(AdamWKernelState& s, const AdamWStepFactors& f) {
  const c10::cuda::CUDAGuard guard(s.table.device());
  kernels::AdamWFactors k =
      kernels::adamw_factors(f.lr, f.beta1, f.beta2, f.eps, f.weight_decay, f.step, f.grad_scale);
  const double* sum_of_squares = nullptr;
  if (f.grad_sum_of_squares.defined()) {
    const Tensor& sq = f.grad_sum_of_squares;
    TORCH_CHECK(f.max_grad_norm > 0, "fused AdamW: clipping on the device needs max_grad_norm > 0");
    TORCH_CHECK(sq.device() == s.table.device() && sq.scalar_type() == torch::kFloat64 && sq.numel() == 1,
                "fused AdamW: the sum of squares must be one fp64 on the parameters' device");
    sum_of_squares = sq.data_ptr<double>();
    k.max_grad_norm = f.max_grad_norm;
  }
  check_launch(kernels::adamw_update(s.device_slots(), s.device_chunks(), s.num_chunks, k, sum_of_squares,
                                     current_stream(s.table)),
               "adamw_update");
}

}  // namespace cuda_ops
}  // namespace minipuzzle
