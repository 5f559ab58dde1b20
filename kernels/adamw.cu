// Launchers: argument checks and grids (kernels in adamw_kernels.cuh).
#include "adamw_cuda.h"
#include "adamw_kernels.cuh"

namespace minipuzzle::kernels {

using namespace detail;

cudaError_t adamw_update(const AdamWSlot* slots, const AdamWChunkRef* chunks, int64_t num_chunks,
                         const AdamWFactors& factors, const double* grad_sum_of_squares, cudaStream_t stream) {
  if (num_chunks < 0 || num_chunks > 0x7fffffff) return cudaErrorInvalidValue;
  if (grad_sum_of_squares && !(factors.max_grad_norm > 0)) return cudaErrorInvalidValue;
  if (num_chunks == 0) return cudaSuccess;
  adamw_update_kernel<<<static_cast<unsigned>(num_chunks), kAdamWThreads, 0, stream>>>(slots, chunks, factors,
                                                                                         grad_sum_of_squares);
  return cudaGetLastError();
}

cudaError_t grad_sum_of_squares(const AdamWSlot* slots, const AdamWChunkRef* chunks, int64_t num_chunks,
                                float* partials, double* sum, cudaStream_t stream) {
  if (num_chunks < 0 || num_chunks > 0x7fffffff) return cudaErrorInvalidValue;
  if (num_chunks > 0) {
    grad_squares_kernel<<<static_cast<unsigned>(num_chunks), kAdamWThreads, 0, stream>>>(slots, chunks, partials);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  sum_partials_kernel<<<1, kAdamWThreads, 0, stream>>>(partials, num_chunks, sum);
  return cudaGetLastError();
}

}  // namespace minipuzzle::kernels
