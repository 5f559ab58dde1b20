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

namespace {

kernels::SsdShape shape_of(const Tensor& x, const Tensor& B, const Tensor& C, int64_t chunk_size) {
  kernels::SsdShape s;
  s.batch = x.size(0), s.len = x.size(1), s.heads = x.size(2), s.head_dim = x.size(3);
  s.groups = B.size(2), s.state = B.size(3), s.chunk = chunk_size;
  s.x_batch_stride = x.stride(0), s.x_token_stride = x.stride(1);
  s.b_batch_stride = B.stride(0), s.b_token_stride = B.stride(1);
  s.c_batch_stride = C.stride(0), s.c_token_stride = C.stride(1);
  return s;
}

Tensor scratch(size_t bytes, const Tensor& like) {
  return torch::empty({static_cast<int64_t>(bytes)}, like.options().dtype(torch::kUInt8));
}

// The kernels' inputs: x, B, C packed (views kept when they already are),
// dt, A, D in fp32.
struct SsdArgs {
  Tensor x, dt, A, B, C, D;
  kernels::SsdShape shape;
  SsdArgs(const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& B_in, const Tensor& C_in,
          const Tensor& D_in, int64_t chunk)
      : x(packed_inner(x_in)),
        dt(dt_in.to(torch::kFloat32).contiguous()),
        A(A_in.to(torch::kFloat32).contiguous()),
        B(packed_inner(B_in)),
        C(packed_inner(C_in)),
        D(D_in.defined() ? D_in.to(torch::kFloat32).contiguous() : Tensor()),
        shape(shape_of(x, B, C, chunk)) {}
  const float* d_ptr() const { return D.defined() ? D.data_ptr<float>() : nullptr; }
};

Tensor run_forward(const SsdArgs& a) {
  const auto& s = a.shape;
  Tensor y = torch::empty({s.batch, s.len, s.heads, s.head_dim}, a.x.options().dtype(torch::kFloat32));
  Tensor ws = scratch(kernels::ssd_scan_workspace_bytes(s), a.x);
  check_launch(kernels::ssd_scan_forward(s, kernel_dtype(a.x.scalar_type()), a.x.data_ptr(), a.dt.data_ptr<float>(),
                                         a.A.data_ptr<float>(), a.B.data_ptr(), a.C.data_ptr(), a.d_ptr(),
                                         y.data_ptr<float>(), ws.data_ptr(), current_stream(a.x)),
               "ssd_scan forward");
  return y;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SsdScanFunction : public torch::autograd::Function<SsdScanFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                        const Tensor& C, const Tensor& D, int64_t chunk) {
    const c10::cuda::CUDAGuard guard(x.device());
    ctx->save_for_backward({x, dt, A, B, C, D});
    ctx->saved_data["chunk"] = chunk;
    return run_forward(SsdArgs(x, dt, A, B, C, D, chunk));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &dt = saved[1], &A = saved[2], &B = saved[3], &C = saved[4], &D = saved[5];
    const c10::cuda::CUDAGuard guard(x.device());
    const SsdArgs a(x, dt, A, B, C, D, ctx->saved_data["chunk"].toInt());
    const auto& s = a.shape;
    const Tensor dy = grad_outputs[0].to(torch::kFloat32).contiguous();
    const auto f32 = x.options().dtype(torch::kFloat32);
    Tensor dx = torch::empty({s.batch, s.len, s.heads, s.head_dim}, f32);
    Tensor ddt = torch::empty({s.batch, s.len, s.heads}, f32);
    Tensor dB = torch::empty({s.batch, s.len, s.groups, s.state}, f32), dC = torch::empty_like(dB);
    Tensor dA = torch::empty({s.heads}, f32), dD = D.defined() ? torch::empty({s.heads}, f32) : Tensor();
    Tensor ws = scratch(kernels::ssd_scan_backward_workspace_bytes(s), x);
    check_launch(kernels::ssd_scan_backward(s, kernel_dtype(a.x.scalar_type()), a.x.data_ptr(), a.dt.data_ptr<float>(),
                                            a.A.data_ptr<float>(), a.B.data_ptr(), a.C.data_ptr(), a.d_ptr(),
                                            dy.data_ptr<float>(), dx.data_ptr<float>(), ddt.data_ptr<float>(),
                                            dA.data_ptr<float>(), dB.data_ptr<float>(), dC.data_ptr<float>(),
                                            D.defined() ? dD.data_ptr<float>() : nullptr, ws.data_ptr(),
                                            current_stream(x)),
                 "ssd_scan backward");
    return {dx.to(x.scalar_type()), ddt.to(dt.scalar_type()),  dA.to(A.scalar_type()),
            dB.to(B.scalar_type()), dC.to(C.scalar_type()),    D.defined() ? dD.to(D.scalar_type()) : Tensor(),
            Tensor()};
  }
};

}  // namespace

Tensor ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
                int64_t chunk_size) {
  return SsdScanFunction::apply(x, dt, A, B, C, D, chunk_size);
}

}  // namespace minipuzzle::cuda_ops
