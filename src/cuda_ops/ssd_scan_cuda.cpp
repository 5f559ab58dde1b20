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
  if (!cuda_kernel_dtype(x.scalar_type()) || !cuda_kernel_dtype(dt.scalar_type()) ||
      B.scalar_type() != x.scalar_type() || C.scalar_type() != x.scalar_type())
    return false;
  for (const Tensor* t : {&dt, &A, &B, &C})
    if (t->device() != x.device()) return false;
  if (D.defined() && D.device() != x.device()) return false;
  kernels::SsdShape s;
  s.batch = b, s.len = L, s.heads = H, s.head_dim = x.size(3), s.groups = B.size(2), s.state = B.size(3);
  s.chunk = chunk_size;
  return kernels::ssd_shape_supported(s);
}

bool ssd_scan_softplus_dt_supported(const Tensor& x, const Tensor& dt_raw, const Tensor& dt_bias, const Tensor& A,
                                    const Tensor& B, const Tensor& C, const Tensor& D, int64_t chunk_size) {
  return dt_bias.dim() == 1 && dt_raw.dim() == 3 && dt_bias.size(0) == dt_raw.size(2) &&
         dt_bias.device() == x.device() && ssd_scan_supported(x, dt_raw, A, B, C, D, chunk_size);
}

namespace {

kernels::SsdShape shape_of(const Tensor& x, const Tensor& B, const Tensor& C, int64_t chunk_size) {
  kernels::SsdShape s;
  s.batch = x.size(0), s.len = x.size(1), s.heads = x.size(2), s.head_dim = x.size(3);
  s.groups = B.size(2), s.state = B.size(3), s.chunk = chunk_size;
  s.x_batch_stride = x.stride(0), s.x_token_stride = x.stride(1);
  s.b_batch_stride = B.stride(0), s.b_token_stride = B.stride(1);
  s.c_batch_stride = C.stride(0), s.c_token_stride = C.stride(1);
  s.tensor_cores = ssd_tensor_cores_enabled();
  return s;
}

Tensor scratch(size_t bytes, const Tensor& like) {
  return torch::empty({static_cast<int64_t>(bytes)}, like.options().dtype(torch::kUInt8));
}

// [b, L, H] with unit head stride (the mixer's slice of in_proj's output
// already is, with a token stride of in_proj's width).
Tensor unit_head_stride(const Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

// The kernels' inputs: x, B, C packed (views kept when they already are),
// dt in its own dtype with unit head stride, A, D and dt_bias in fp32.
struct SsdArgs {
  Tensor x, dt, A, B, C, D, dt_bias;
  bool softplus = false;
  float dt_min = 0.0f;
  kernels::SsdShape shape;
  SsdArgs(const Tensor& x_in, const Tensor& dt_in, const Tensor& A_in, const Tensor& B_in, const Tensor& C_in,
          const Tensor& D_in, int64_t chunk, const Tensor& dt_bias_in = Tensor(), bool softplus_dt = false,
          double min = 0.0)
      : x(packed_inner(x_in)),
        dt(unit_head_stride(dt_in)),
        A(A_in.to(torch::kFloat32).contiguous()),
        B(packed_inner(B_in)),
        C(packed_inner(C_in)),
        D(D_in.defined() ? D_in.to(torch::kFloat32).contiguous() : Tensor()),
        dt_bias(dt_bias_in.defined() ? dt_bias_in.to(torch::kFloat32).contiguous() : Tensor()),
        softplus(softplus_dt),
        dt_min(static_cast<float>(min)),
        shape(shape_of(x, B, C, chunk)) {}
  const float* d_ptr() const { return D.defined() ? D.data_ptr<float>() : nullptr; }
  kernels::SsdDt dt_arg() const {
    kernels::SsdDt d;
    d.dtype = kernel_dtype(dt.scalar_type());
    d.values = dt.data_ptr();
    d.batch_stride = dt.stride(0), d.token_stride = dt.stride(1);
    d.bias = dt_bias.defined() ? dt_bias.data_ptr<float>() : nullptr;
    d.softplus = softplus;
    d.min = dt_min;
    return d;
  }
};

Tensor run_forward(const SsdArgs& a) {
  const auto& s = a.shape;
  Tensor y = torch::empty({s.batch, s.len, s.heads, s.head_dim}, a.x.options().dtype(torch::kFloat32));
  Tensor ws = scratch(kernels::ssd_scan_workspace_bytes(s), a.x);
  check_launch(kernels::ssd_scan_forward(s, kernel_dtype(a.x.scalar_type()), a.x.data_ptr(), a.dt_arg(),
                                         a.A.data_ptr<float>(), a.B.data_ptr(), a.C.data_ptr(), a.d_ptr(),
                                         y.data_ptr<float>(), ws.data_ptr(), current_stream(a.x)),
               "ssd_scan forward");
  return y;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct SsdGrads {
  Tensor dx, ddt, dA, dB, dC, dD, ddt_bias;
};

SsdGrads run_backward(const SsdArgs& a, const Tensor& grad_y) {
  const auto& s = a.shape;
  const Tensor dy = grad_y.to(torch::kFloat32).contiguous();
  const auto f32 = a.x.options().dtype(torch::kFloat32);
  SsdGrads g;
  g.dx = torch::empty({s.batch, s.len, s.heads, s.head_dim}, f32);
  g.ddt = torch::empty({s.batch, s.len, s.heads}, f32);
  g.dB = torch::empty({s.batch, s.len, s.groups, s.state}, f32), g.dC = torch::empty_like(g.dB);
  g.dA = torch::empty({s.heads}, f32);
  if (a.D.defined()) g.dD = torch::empty({s.heads}, f32);
  if (a.dt_bias.defined()) g.ddt_bias = torch::empty({s.heads}, f32);
  auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  Tensor ws = scratch(kernels::ssd_scan_backward_workspace_bytes(s, kernel_dtype(a.x.scalar_type())), a.x);
  check_launch(kernels::ssd_scan_backward(s, kernel_dtype(a.x.scalar_type()), a.x.data_ptr(), a.dt_arg(),
                                          a.A.data_ptr<float>(), a.B.data_ptr(), a.C.data_ptr(), a.d_ptr(),
                                          dy.data_ptr<float>(), g.dx.data_ptr<float>(), g.ddt.data_ptr<float>(),
                                          g.dA.data_ptr<float>(), g.dB.data_ptr<float>(), g.dC.data_ptr<float>(),
                                          ptr(g.dD), ptr(g.ddt_bias), ws.data_ptr(), current_stream(a.x)),
               "ssd_scan backward");
  return g;
}

// Gradient `g` in the dtype of the input it belongs to (undefined stays so).
Tensor like(const Tensor& g, const Tensor& input) { return g.defined() ? g.to(input.scalar_type()) : Tensor(); }

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
    const SsdGrads g = run_backward(SsdArgs(x, dt, A, B, C, D, ctx->saved_data["chunk"].toInt()), grad_outputs[0]);
    return {like(g.dx, x), like(g.ddt, dt), like(g.dA, A), like(g.dB, B), like(g.dC, C), like(g.dD, D), Tensor()};
  }
};

// The same with the mixer's dt step inside: dt = max(softplus(dt_raw +
// dt_bias), dt_min) computed by the kernels from the raw values.
class SsdScanSoftplusDtFunction : public torch::autograd::Function<SsdScanSoftplusDtFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& dt_raw, const Tensor& dt_bias,
                        const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D, int64_t chunk,
                        double dt_min) {
    const c10::cuda::CUDAGuard guard(x.device());
    ctx->save_for_backward({x, dt_raw, dt_bias, A, B, C, D});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["dt_min"] = dt_min;
    return run_forward(SsdArgs(x, dt_raw, A, B, C, D, chunk, dt_bias, true, dt_min));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &dt_raw = saved[1], &dt_bias = saved[2], &A = saved[3], &B = saved[4],
                 &C = saved[5], &D = saved[6];
    const c10::cuda::CUDAGuard guard(x.device());
    const SsdGrads g = run_backward(SsdArgs(x, dt_raw, A, B, C, D, ctx->saved_data["chunk"].toInt(), dt_bias, true,
                                            ctx->saved_data["dt_min"].toDouble()),
                                    grad_outputs[0]);
    return {like(g.dx, x), like(g.ddt, dt_raw), like(g.ddt_bias, dt_bias), like(g.dA, A), like(g.dB, B),
            like(g.dC, C), like(g.dD, D), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor ssd_scan(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
                int64_t chunk_size) {
  return SsdScanFunction::apply(x, dt, A, B, C, D, chunk_size);
}

Tensor ssd_scan_softplus_dt(const Tensor& x, const Tensor& dt_raw, const Tensor& dt_bias, const Tensor& A,
                            const Tensor& B, const Tensor& C, const Tensor& D, int64_t chunk_size, double dt_min) {
  return SsdScanSoftplusDtFunction::apply(x, dt_raw, dt_bias, A, B, C, D, chunk_size, dt_min);
}

}  // namespace minipuzzle::cuda_ops
