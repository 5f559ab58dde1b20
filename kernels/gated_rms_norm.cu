// Launchers: argument checks, grid, dispatch on dtype (kernels in gated_rms_norm_kernels.cuh).
#include "gated_rms_norm_cuda.h"
#include "gated_rms_norm_kernels.cuh"

namespace minipuzzle::kernels {

using namespace detail;

cudaError_t gated_rms_norm_forward(const GatedNormShape& shape, DType dtype, const void* x, const void* z,
                                   const void* weight, float eps, void* out, float* rstd, cudaStream_t stream) {
  if (!shape_ok(shape)) return cudaErrorInvalidValue;
  if (shape.rows == 0) return cudaSuccess;
  dim3 grid;
  if (!forward_grid(shape, grid)) return cudaErrorInvalidConfiguration;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    gated_norm_forward_kernel<T><<<grid, kNormThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(z),
                                                                static_cast<const T*>(weight), eps,
                                                                static_cast<T*>(out), rstd, shape.channels,
                                                                shape.group_size);
  });
  return cudaGetLastError();
}

cudaError_t gated_rms_norm_backward(const GatedNormShape& shape, DType dtype, const void* x, const void* z,
                                    const void* weight, const float* rstd, const void* dout, void* dx, void* dz,
                                    float* dweight, cudaStream_t stream) {
  if (!shape_ok(shape)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(dweight, 0, sizeof(float) * shape.channels, stream);
  if (err != cudaSuccess || shape.rows == 0) return err;
  dim3 grid;
  if (!backward_grid(shape, grid)) return cudaErrorInvalidConfiguration;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    gated_norm_backward_kernel<T><<<grid, kNormThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(z), static_cast<const T*>(weight), rstd,
        static_cast<const T*>(dout), static_cast<T*>(dx), static_cast<T*>(dz), dweight, shape.rows, shape.channels,
        shape.group_size);
  });
  return cudaGetLastError();
}

}  // namespace minipuzzle::kernels
