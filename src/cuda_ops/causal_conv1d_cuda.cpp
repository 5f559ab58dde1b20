#include "causal_conv1d_silu_cuda.h"

#include "cuda_launch.h"
#include "cuda_ops/cuda_ops.h"
#include "minipuzzle/kernel_dispatch.h"

namespace minipuzzle::cuda_ops {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

kernels::Conv1dShape shape_of(const Tensor& x, const Tensor& weight) {
  kernels::Conv1dShape s;
  s.batch = x.size(0);
  s.len = x.size(1);
  s.channels = x.size(2);
  s.width = weight.size(-1);
  s.x_batch_stride = x.stride(0);
  s.x_token_stride = x.stride(1);
  return s;
}

// The kernels read x with its batch and token strides (the mixer's xBC is a
// channel slice of in_proj's output: no copy); channels must be contiguous.
Tensor channels_contiguous(const Tensor& x) {
  return x.stride(2) == 1 && x.stride(1) > 0 && x.stride(0) > 0 ? x : x.contiguous();
}

// The kernels take fp32 [C, K] weights and [C] bias (tiny copies).
Tensor weight_f32(const Tensor& weight) { return weight.reshape({weight.size(0), weight.size(-1)}).to(torch::kFloat32).contiguous(); }
Tensor bias_f32(const Tensor& bias) { return bias.defined() ? bias.to(torch::kFloat32).contiguous() : Tensor(); }

class CausalConv1dSiluFunction : public torch::autograd::Function<CausalConv1dSiluFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x_in, const Tensor& weight, const Tensor& bias) {
    const c10::cuda::CUDAGuard guard(x_in.device());
    const Tensor x = channels_contiguous(x_in);
    const Tensor w = weight_f32(weight), b = bias_f32(bias);
    Tensor out = torch::empty(x.sizes(), x.options());
    check_launch(kernels::causal_conv1d_silu_forward(shape_of(x, weight), kernel_dtype(x.scalar_type()), x.data_ptr(),
                                                     w.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr,
                                                     out.data_ptr(), current_stream(x)),
                 "causal_conv1d_silu forward");
    ctx->save_for_backward({x, weight, bias});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const c10::cuda::CUDAGuard guard(x.device());
    const Tensor dout = grad_outputs[0].to(x.scalar_type()).contiguous();
    const Tensor w = weight_f32(weight), b = bias_f32(bias);
    Tensor dx = torch::empty(x.sizes(), x.options());
    Tensor dw = torch::empty({weight.size(0), weight.size(-1)}, x.options().dtype(torch::kFloat32));
    Tensor db = bias.defined() ? torch::empty({bias.size(0)}, dw.options()) : Tensor();
    check_launch(kernels::causal_conv1d_silu_backward(
                     shape_of(x, weight), kernel_dtype(x.scalar_type()), x.data_ptr(), w.data_ptr<float>(),
                     b.defined() ? b.data_ptr<float>() : nullptr, dout.data_ptr(), dx.data_ptr(),
                     dw.data_ptr<float>(), db.defined() ? db.data_ptr<float>() : nullptr, current_stream(x)),
                 "causal_conv1d_silu backward");
    return {dx, dw.view(weight.sizes()).to(weight.scalar_type()),
            bias.defined() ? db.to(bias.scalar_type()) : Tensor()};
  }
};

}  // namespace

bool causal_conv1d_silu_supported(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (x.dim() != 3 || weight.dim() != 3 || weight.size(1) != 1 || weight.size(0) != x.size(2)) return false;
  if (!kernels::conv1d_width_supported(weight.size(2)) || !cuda_kernel_dtype(x.scalar_type())) return false;
  if (weight.device() != x.device() || (bias.defined() && (bias.device() != x.device() || bias.dim() != 1 ||
                                                           bias.size(0) != x.size(2))))
    return false;
  // Grid limits: 65535 sequences, 65535 tiles of 64 tokens.
  return x.size(0) <= 65535 && x.size(1) <= int64_t{65535} * 64;
}

Tensor causal_conv1d_silu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return CausalConv1dSiluFunction::apply(x, weight, bias);
}

}  // namespace minipuzzle::cuda_ops
