// Launchers: argument checks, dispatch on dtype (launch sequences in ssd_scan_steps.cuh).
#include "ssd_scan_cuda.h"
#include "ssd_scan_steps.cuh"

namespace minipuzzle::kernels {

using namespace detail;

bool ssd_shape_supported(const SsdShape& s) {
  if (s.batch < 0 || s.len < 0 || s.heads <= 0 || s.head_dim <= 0 || s.groups <= 0 || s.state <= 0) return false;
  if (s.chunk < 1 || s.chunk > kSsdMaxChunk || s.heads % s.groups != 0) return false;
  const int64_t nc = s.len > 0 ? ssd_chunks(s) : 0;
  return s.batch * nc <= 0x7fffffff && s.heads <= 65535 && s.groups <= 65535 && s.batch <= 0x7fffffff;
}

namespace {

template <int N>
size_t total(const size_t (&sizes)[N]) {
  size_t sum = 0;
  for (size_t v : sizes) sum += v;
  return sum;
}

// Only read: any non-negative strides will do (broadcast ones included).
bool dt_valid(const SsdDt& dt) { return dt.values != nullptr && dt.batch_stride >= 0 && dt.token_stride >= 0; }

}  // namespace

size_t ssd_scan_workspace_bytes(const SsdShape& shape) {
  size_t sizes[kSsdPieces];
  ssd_piece_sizes(shape, sizes);
  return total(sizes);
}

cudaError_t ssd_scan_forward(const SsdShape& s, DType dtype, const void* x, const SsdDt& dt, const float* A,
                             const void* B, const void* C, const float* D, float* y, void* workspace,
                             cudaStream_t stream) {
  if (!ssd_shape_supported(s)) return cudaErrorInvalidValue;
  if (s.batch == 0 || s.len == 0) return cudaSuccess;
  if (!dt_valid(dt)) return cudaErrorInvalidValue;
  const SsdWorkspace ws = ssd_workspace(s, workspace);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_dtype(dt.dtype, [&](auto dt_tag) {
      using TD = decltype(dt_tag);
      ssd_forward_steps(s, static_cast<const T*>(x), ssd_dt_in<TD>(dt), A, static_cast<const T*>(B),
                        static_cast<const T*>(C), D, y, ws, [&](auto kernel, dim3 grid, auto... args) {
                          kernel<<<grid, kSsdThreads, 0, stream>>>(args...);
                        });
    });
  });
  return cudaGetLastError();
}

size_t ssd_scan_backward_workspace_bytes(const SsdShape& shape, DType dtype) {
  size_t sizes[kSsdBackwardPieces];
  ssd_backward_piece_sizes(shape, dtype, sizes);
  return total(sizes);
}

cudaError_t ssd_scan_backward(const SsdShape& s, DType dtype, const void* x, const SsdDt& dt, const float* A,
                              const void* B, const void* C, const float* D, const float* dy, float* dx, float* ddt,
                              float* dA, float* dB, float* dC, float* dD, float* ddt_bias, void* workspace,
                              cudaStream_t stream) {
  if (!ssd_shape_supported(s)) return cudaErrorInvalidValue;
  if (s.batch > 0 && s.len > 0 && !dt_valid(dt)) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(dA, 0, sizeof(float) * s.heads, stream);
  if (err == cudaSuccess && dD) err = cudaMemsetAsync(dD, 0, sizeof(float) * s.heads, stream);
  if (err == cudaSuccess && ddt_bias) err = cudaMemsetAsync(ddt_bias, 0, sizeof(float) * s.heads, stream);
  if (err != cudaSuccess || s.batch == 0 || s.len == 0) return err;
  const SsdBackwardWorkspace ws = ssd_backward_workspace(s, dtype, workspace);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_dtype(dt.dtype, [&](auto dt_tag) {
      using TD = decltype(dt_tag);
      ssd_backward_steps(s, static_cast<const T*>(x), ssd_dt_in<TD>(dt), A, static_cast<const T*>(B),
                         static_cast<const T*>(C), D, dy, dx, ddt, dA, dB, dC, dD, ddt_bias, ws,
                         [&](auto kernel, dim3 grid, auto... args) {
                           kernel<<<grid, kSsdThreads, 0, stream>>>(args...);
                         });
    });
  });
  return cudaGetLastError();
}

}  // namespace minipuzzle::kernels
