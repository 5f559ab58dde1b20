#include "ssd_scan_cuda.h"

#include "cuda_launch.h"
#include "cuda_ops/cuda_ops.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle::cuda_ops {
namespace {

using torch::Tensor;

// [b, L, K, inner] with K and inner packed (what the kernels index); the
// mixer's views of xBC already are, with a token stride of conv_dim.
Tensor packed_inner(const Tensor& t) {
  return t.stride(3) == 1 && t.stride(2) == t.size(3) ? t : t.contiguous();
}

}  // namespace

bool ssd_scan_supported(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                        const Tensor& D, int64_t chunk_size) {
  if (x.dim() != 4 || dt.dim() != 3 || A.dim() != 1 || B.dim() != 4 || C.sizes() != B.sizes()) return false;
  const int64_t b = x.size(0), L = x.size(1), H = x.size(2);
  if (dt.size(0) != b || dt.size(1) != L || dt.size(2) != H || A.size(0) != H) return false;
  if (B.size(0) != b || B.size(1) != L || (D.defined() && (D.dim() != 1 || D.size(0) != H))) return false;
  if (!cuda_kernel_dtype(x.scalar_type()) || B.scalar_type() != x.scalar_type() || C.scalar_type() != x.scalar_type())
    return false;
  for (const Tensor* t : {&dt, &A, &B, &C})
    if (t->device() != x.device()) return false;
  if (D.defined() && D.device() != x.device()) return false;
  kernels::SsdShape s;
  s.batch = b, s.len = L, s.heads = H, s.head_dim = x.size(3), s.groups = B.size(2), s.state = B.size(3);
  s.chunk = chunk_size;
  return kernels::ssd_shape_supported(s);
}

Tensor ssd_scan_forward(const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& B_in,
                        const Tensor& C_in, const Tensor& D_in, int64_t chunk_size) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  torch::NoGradGuard no_grad;
  const Tensor x = packed_inner(x_in), B = packed_inner(B_in), C = packed_inner(C_in);
  const Tensor dt = dt_in.to(torch::kFloat32).contiguous(), A = A_in.to(torch::kFloat32).contiguous();
  const Tensor D = D_in.defined() ? D_in.to(torch::kFloat32).contiguous() : Tensor();
  kernels::SsdShape s;
  s.batch = x.size(0), s.len = x.size(1), s.heads = x.size(2), s.head_dim = x.size(3);
  s.groups = B.size(2), s.state = B.size(3), s.chunk = chunk_size;
  s.x_batch_stride = x.stride(0), s.x_token_stride = x.stride(1);
  s.b_batch_stride = B.stride(0), s.b_token_stride = B.stride(1);
  s.c_batch_stride = C.stride(0), s.c_token_stride = C.stride(1);
  Tensor y = torch::empty({s.batch, s.len, s.heads, s.head_dim}, x.options().dtype(torch::kFloat32));
  Tensor workspace =
      torch::empty({static_cast<int64_t>(kernels::ssd_scan_workspace_bytes(s))}, x.options().dtype(torch::kUInt8));
  check_launch(kernels::ssd_scan_forward(s, kernel_dtype(x.scalar_type()), x.data_ptr(), dt.data_ptr<float>(),
                                         A.data_ptr<float>(), B.data_ptr(), C.data_ptr(),
                                         D.defined() ? D.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                                         workspace.data_ptr(), current_stream(x)),
               "ssd_scan forward");
  return y;
}

}  // namespace minipuzzle::cuda_ops
