// Launchers: argument checks, grid, dispatch on dtype (kernels in causal_conv1d_silu_kernels.cuh).
#include "causal_conv1d_silu_cuda.h"
#include "causal_conv1d_silu_kernels.cuh"

namespace minipuzzle::kernels {

using namespace detail;

namespace {

// Checks the shape and runs launch(T{}, width constant, grid) for its dtype.
template <typename F>
cudaError_t launch_conv(const Conv1dShape& shape, DType dtype, F&& launch) {
  if (shape.batch == 0 || shape.len == 0 || shape.channels == 0) return cudaSuccess;
  dim3 grid;
  if (!grid_for(shape, grid)) return cudaErrorInvalidConfiguration;
  dispatch_dtype(dtype, [&](auto tag) { dispatch_width(shape.width, [&](auto k) { launch(tag, k, grid); }); });
  return cudaGetLastError();
}

}  // namespace

cudaError_t causal_conv1d_silu_forward(const Conv1dShape& shape, DType dtype, const void* x, const float* weight,
                                       const float* bias, void* out, cudaStream_t stream) {
  if (!conv1d_width_supported(shape.width)) return cudaErrorInvalidValue;
  return launch_conv(shape, dtype, [&](auto tag, auto k, dim3 grid) {
    using T = decltype(tag);
    conv_forward_kernel<T, decltype(k)::value><<<grid, kChannelsPerBlock, 0, stream>>>(
        shape, static_cast<const T*>(x), weight, bias, static_cast<T*>(out));
  });
}

cudaError_t causal_conv1d_silu_backward(const Conv1dShape& shape, DType dtype, const void* x, const float* weight,
                                        const float* bias, const void* dout, void* dx, float* dweight, float* dbias,
                                        cudaStream_t stream) {
  if (!conv1d_width_supported(shape.width)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(dweight, 0, sizeof(float) * shape.channels * shape.width, stream);
  if (err == cudaSuccess && dbias) err = cudaMemsetAsync(dbias, 0, sizeof(float) * shape.channels, stream);
  if (err != cudaSuccess) return err;
  return launch_conv(shape, dtype, [&](auto tag, auto k, dim3 grid) {
    using T = decltype(tag);
    conv_backward_kernel<T, decltype(k)::value><<<grid, kChannelsPerBlock, 0, stream>>>(
        shape, static_cast<const T*>(x), weight, bias, static_cast<const T*>(dout), static_cast<T*>(dx), dweight,
        dbias);
  });
}

}  // namespace minipuzzle::kernels
