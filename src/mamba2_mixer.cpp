#include "minipuzzle/causal_conv1d.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/rms_norm.h"
#include "minipuzzle/ssd_scan.h"

namespace minipuzzle {

Mamba2MixerImpl::Mamba2MixerImpl(const ModelConfig& c, const ParameterInit& o) : cfg_(c) {
  const int64_t D_ = c.hidden_size, H = c.mamba_num_heads, di = c.mamba_d_inner(), cd = c.mamba_conv_dim();
  in_proj = register_module("in_proj", weights({c.mamba_in_proj_dim(), D_}, o));
  conv1d = register_module("conv1d", Weights(std::vector<int64_t>{cd, 1, c.conv_kernel},
                                             c.use_conv_bias ? std::vector<int64_t>{cd} : std::vector<int64_t>{}, o));
  A_log = register_parameter("A_log", o.make({H}));
  D = register_parameter("D", o.make({H}));
  dt_bias = register_parameter("dt_bias", o.make({H}));
  norm = register_module("norm", weights({di}, o));
  out_proj = register_module("out_proj", weights({D_, di}, o));
}

torch::Tensor Mamba2MixerImpl::forward(const torch::Tensor& h, int64_t layer, const ObserverList& obs) {
  const int64_t b = h.size(0), L = h.size(1);
  const int64_t H = cfg_.mamba_num_heads, P = cfg_.mamba_head_dim, G = cfg_.n_groups, N = cfg_.ssm_state_size;
  const int64_t di = cfg_.mamba_d_inner(), cd = cfg_.mamba_conv_dim();

  auto zxbcdt = torch::linear(h, in_proj->weight);
  auto z = zxbcdt.narrow(-1, 0, di);
  auto xbc = zxbcdt.narrow(-1, di, cd);
  auto dt = zxbcdt.narrow(-1, di + cd, H);
  if (!obs.empty()) obs.notify(ObservePoint::MambaX, layer, xbc.narrow(-1, 0, di));

  xbc = causal_conv1d_silu(xbc, conv1d->weight, conv1d->bias);
  auto x = xbc.narrow(-1, 0, di).reshape({b, L, H, P});
  auto B = xbc.narrow(-1, di, G * N).reshape({b, L, G, N});
  auto C = xbc.narrow(-1, di + G * N, G * N).reshape({b, L, G, N});

  // dt = max(softplus(dt + dt_bias), time_step_min); the scan runs in fp32.
  auto A = -torch::exp(A_log.to(torch::kFloat32));
  auto y = ssd_scan_softplus_dt(x, dt, dt_bias, A, B, C, D, cfg_.chunk_size, cfg_.time_step_min).reshape({b, L, di});

  y = gated_rms_norm(y, z, norm->weight, di / G, cfg_.layer_norm_epsilon);
  return torch::linear(y.to(h.scalar_type()), out_proj->weight);
}

}  // namespace minipuzzle
