#include "gated_rms_norm_cuda.h"

#include "cuda_launch.h"
#include "cuda_ops/cuda_ops.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle::cuda_ops {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

kernels::GatedNormShape shape_of(const Tensor& x, int64_t group_size) {
  kernels::GatedNormShape s;
  s.channels = x.size(-1);
  s.rows = s.channels > 0 ? x.numel() / s.channels : 0;
  s.group_size = group_size;
  return s;
}

class GatedRmsNormFunction : public torch::autograd::Function<GatedRmsNormFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x_in, const Tensor& z_in, const Tensor& weight_in,
                        int64_t group_size, double eps) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    const Tensor x = x_in.contiguous(), z = z_in.contiguous(), weight = weight_in.contiguous();
    const auto shape = shape_of(x, group_size);
    Tensor out = torch::empty_like(x);
    Tensor rstd = torch::empty({shape.rows, shape.channels / group_size}, x.options().dtype(torch::kFloat32));
    check_launch(kernels::gated_rms_norm_forward(shape, kernel_dtype(x.scalar_type()), x.data_ptr(), z.data_ptr(),
                                                 weight.data_ptr(), static_cast<float>(eps), out.data_ptr(),
                                                 rstd.data_ptr<float>(), current_stream(x)),
                 "gated_rms_norm forward");
    ctx->save_for_backward({x, z, weight, rstd});
    ctx->saved_data["group_size"] = group_size;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &z = saved[1], &weight = saved[2], &rstd = saved[3];
    const int64_t group_size = ctx->saved_data["group_size"].toInt();
    const c10::cuda::CUDAGuard guard(x.device());
    const Tensor dout = grad_outputs[0].to(x.scalar_type()).contiguous();
    Tensor dx = torch::empty_like(x), dz = torch::empty_like(z);
    Tensor dw = torch::empty({x.size(-1)}, x.options().dtype(torch::kFloat32));
    check_launch(kernels::gated_rms_norm_backward(shape_of(x, group_size), kernel_dtype(x.scalar_type()), x.data_ptr(),
                                                  z.data_ptr(), weight.data_ptr(), rstd.data_ptr<float>(),
                                                  dout.data_ptr(), dx.data_ptr(), dz.data_ptr(),
                                                  dw.data_ptr<float>(), current_stream(x)),
                 "gated_rms_norm backward");
    return {dx, dz, dw.to(weight.scalar_type()), Tensor(), Tensor()};
  }
};

}  // namespace

bool gated_rms_norm_supported(const Tensor& x, const Tensor& z, const Tensor& weight, int64_t group_size) {
  if (x.dim() < 1 || z.sizes() != x.sizes() || weight.dim() != 1 || weight.size(0) != x.size(-1)) return false;
  // The kernel has one element type; z and weight are converted to x's, which
  // is exact when they match it or x is fp32 (the Mamba2 mixer: fp32 scan
  // output, model-dtype gate and weight).
  const auto xt = x.scalar_type();
  if (xt != torch::kFloat32 && (z.scalar_type() != xt || weight.scalar_type() != xt)) return false;
  if (!z.is_floating_point() || !weight.is_floating_point()) return false;
  if (!cuda_kernel_dtype(xt) || z.device() != x.device() || weight.device() != x.device()) return false;
  if (group_size <= 0 || group_size > kernels::kGatedNormMaxGroupSize || x.size(-1) % group_size != 0) return false;
  const int64_t rows = x.size(-1) > 0 ? x.numel() / x.size(-1) : 0;
  return x.size(-1) / group_size <= 65535 && rows <= 0x7fffffff;
}

Tensor gated_rms_norm(const Tensor& x, const Tensor& z, const Tensor& weight, int64_t group_size, double eps) {
  // Autograd casts the gradients of z and weight back to their dtypes.
  return GatedRmsNormFunction::apply(x, z.to(x.scalar_type()), weight.to(x.scalar_type()), group_size, eps);
}

}  // namespace minipuzzle::cuda_ops
