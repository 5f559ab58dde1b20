// AdamW over every parameter of a model in one launch, and the global
// gradient norm in two. Definition: src/adamw_update.cpp
// (adamw_update_reference), per element in fp32:
//   g = grad * grad_scale                      (the clip factor, folded in)
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   w = w (1 - lr wd)                          (decaying tensors only)
//   w = w - lr / bc1 * m / (sqrt(v / bc2) + eps);  param = round(w)
// w is the fp32 master copy (the parameter itself when that is fp32).
//
// The tensors are described once by a table in device memory (slots) and cut
// into chunks of kAdamWChunk elements, one block each: the table is built when
// the parameters are first stepped and reused while no pointer changes, so a
// step costs one launch whatever the number of tensors.
#pragma once

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernel_dtype.h"

namespace minipuzzle::kernels {

constexpr int64_t kAdamWChunk = 65536;

// One parameter tensor (contiguous, numel elements each).
struct AdamWSlot {
  void* param = nullptr;       // `dtype`
  const void* grad = nullptr;  // `dtype`
  float* master = nullptr;     // == param when dtype is F32
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  int64_t numel = 0;
  DType dtype = DType::F32;
  int32_t decay = 0;      // weight decay applies
  int32_t vector_ok = 0;  // every pointer aligned for 4-element loads
};

// Block b updates elements [chunk * kAdamWChunk, +kAdamWChunk) of slot `slot`.
struct AdamWChunkRef {
  int32_t slot = 0;
  int32_t chunk = 0;
};

// The chunk list for a table of slots, slot by slot (host code).
inline std::vector<AdamWChunkRef> adamw_chunks(const AdamWSlot* slots, int64_t num_slots) {
  std::vector<AdamWChunkRef> chunks;
  for (int64_t s = 0; s < num_slots; ++s)
    for (int64_t c = 0; c * kAdamWChunk < slots[s].numel; ++c)
      chunks.push_back({static_cast<int32_t>(s), static_cast<int32_t>(c)});
  return chunks;
}

// Every factor of the update, computed once on the host in double, rounded
// to fp32 as LibTorch rounds a double scalar for an fp32 tensor.
struct AdamWFactors {
  float beta1 = 0, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0;
  float bias_correction2 = 1;  // 1 - beta2^step
  float eps = 0;
  float step_size = 0;     // -lr / (1 - beta1^step)
  float decay_factor = 1;  // 1 - lr * weight_decay
  float grad_scale = 1;
  // Clipping on the device (adamw_update's grad_sum_of_squares): the factor
  // min(1, max_grad_norm / (norm + 1e-6)) where norm exceeds max_grad_norm,
  // computed in fp64 by every block from the sum of squares and rounded to
  // fp32, as the host computes grad_scale; it replaces grad_scale.
  double max_grad_norm = 0;
};

// The factors of update number `step` (from 1), from the hyperparameters in
// double (host code).
inline AdamWFactors adamw_factors(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                                  double grad_scale) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamWFactors f;
  f.beta1 = static_cast<float>(beta1);
  f.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  f.beta2 = static_cast<float>(beta2);
  f.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  f.bias_correction2 = static_cast<float>(bc2);
  f.eps = static_cast<float>(eps);
  f.step_size = static_cast<float>(-lr / bc1);
  f.decay_factor = static_cast<float>(weight_decay > 0 ? 1.0 - lr * weight_decay : 1.0);
  f.grad_scale = static_cast<float>(grad_scale);
  return f;
}

// slots and chunks: device memory (see above). grad_sum_of_squares: nullptr,
// or one fp64 in device memory (grad_sum_of_squares() below writes it) from
// which the clip factor is taken without the host reading the norm; then
// factors.max_grad_norm must be > 0.
cudaError_t adamw_update(const AdamWSlot* slots, const AdamWChunkRef* chunks, int64_t num_chunks,
                         const AdamWFactors& factors, const double* grad_sum_of_squares, cudaStream_t stream);

// Sum of squares of every slot's gradient, as fp64 into *sum. partials:
// num_chunks floats of scratch (one per block, then summed in a fixed order,
// so the result does not depend on scheduling).
cudaError_t grad_sum_of_squares(const AdamWSlot* slots, const AdamWChunkRef* chunks, int64_t num_chunks,
                                float* partials, double* sum, cudaStream_t stream);

}  // namespace minipuzzle::kernels
