#include "minipuzzle/ssd_scan.h"

#include "kernels_build.h"
#include "minipuzzle/kernel_dispatch.h"
#if MINIPUZZLE_HAVE_CUDA_KERNELS
#include "cuda_ops/cuda_ops.h"
#endif

namespace minipuzzle {
using torch::indexing::Slice;

namespace {

// [b, L, ...] -> [b, L + pad, ...] with zeros.
torch::Tensor pad_seq(const torch::Tensor& t, int64_t pad) {
  if (pad == 0) return t;
  auto sizes = t.sizes().vec();
  sizes[1] = pad;
  return torch::cat({t, torch::zeros(sizes, t.options())}, 1);
}

}  // namespace

torch::Tensor ssd_scan_reference(const torch::Tensor& x_in, const torch::Tensor& dt_in, const torch::Tensor& A_in,
                                 const torch::Tensor& B_in, const torch::Tensor& C_in, const torch::Tensor& D_in,
                                 int64_t T) {
  const int64_t b = x_in.size(0), L = x_in.size(1), H = x_in.size(2), P = x_in.size(3);
  const int64_t G = B_in.size(2), N = B_in.size(3), R = H / G;
  TORCH_CHECK(H % G == 0, "ssd_scan: heads ", H, " not a multiple of groups ", G);
  const int64_t pad = (T - L % T) % T, Lp = L + pad, c = Lp / T;

  auto x = x_in.to(torch::kFloat32);
  auto dt = dt_in.to(torch::kFloat32);
  auto A = A_in.to(torch::kFloat32);
  // Padding with dt = 0 makes padded steps identity steps (decay 1, no input).
  auto xdt = pad_seq(x * dt.unsqueeze(-1), pad).view({b, c, T, H, P});
  auto a = pad_seq(dt * A, pad).view({b, c, T, H}).permute({0, 3, 1, 2});  // [b,H,c,T]
  auto Bc = pad_seq(B_in.to(torch::kFloat32), pad).view({b, c, T, G, N}).permute({0, 1, 3, 2, 4});  // [b,c,G,T,N]
  auto Cc = pad_seq(C_in.to(torch::kFloat32), pad).view({b, c, T, G, N}).permute({0, 1, 3, 2, 4});

  auto acum = a.cumsum(-1);  // [b,H,c,T]

  // 1. Intra-chunk: y_diag[t] = sum_{s<=t} (C_t.B_s) exp(acum_t - acum_s) xdt_s.
  //    The exponent is a sum of non-positive terms, so exp never overflows.
  auto seg = acum.unsqueeze(-1) - acum.unsqueeze(-2);  // [b,H,c,T(t),T(s)]
  auto causal = torch::ones({T, T}, torch::dtype(torch::kBool).device(x.device())).tril();
  auto decay = torch::exp(seg.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity()));
  auto CB = torch::matmul(Cc, Bc.transpose(-1, -2));  // [b,c,G,T,T], shared by the R heads of a group
  auto M = CB.unsqueeze(3) * decay.permute({0, 2, 1, 3, 4}).reshape({b, c, G, R, T, T});
  auto xh = xdt.permute({0, 1, 3, 2, 4}).reshape({b, c, G, R, T, P});
  auto y_diag = torch::matmul(M, xh);  // [b,c,G,R,T,P]

  // 2. Chunk states: state_c = sum_s exp(acum_last - acum_s) xdt_s B_s^T.
  auto to_end = torch::exp(acum.narrow(-1, T - 1, 1) - acum);  // [b,H,c,T]
  auto xw = xh * to_end.permute({0, 2, 1, 3}).reshape({b, c, G, R, T, 1});
  auto states = torch::matmul(xw.transpose(-1, -2).reshape({b, c, G, R * P, T}), Bc);  // [b,c,G,R*P,N]
  states = states.view({b, c, H, P, N});

  // 3. Inter-chunk recurrence (sequential over chunks: c is small).
  auto chunk_decay = torch::exp(acum.select(-1, T - 1));  // [b,H,c]
  std::vector<torch::Tensor> entering;                    // state entering each chunk
  entering.reserve(c);
  auto running = torch::zeros({b, H, P, N}, x.options());
  for (int64_t k = 0; k < c; ++k) {
    entering.push_back(running);
    running = running * chunk_decay.select(2, k).view({b, H, 1, 1}) + states.select(1, k);
  }
  auto prev = torch::stack(entering, 1);  // [b,c,H,P,N]

  // 4. State -> output: y_off[t] = exp(acum_t) C_t . prev_state.
  auto prev_g = prev.view({b, c, G, R * P, N});
  auto y_off = torch::matmul(Cc, prev_g.transpose(-1, -2));  // [b,c,G,T,R*P]
  y_off = y_off.view({b, c, G, T, R, P}).permute({0, 1, 2, 4, 3, 5});  // [b,c,G,R,T,P]
  y_off = y_off * torch::exp(acum).permute({0, 2, 1, 3}).reshape({b, c, G, R, T, 1});

  auto y = (y_diag + y_off).permute({0, 1, 4, 2, 3, 5}).reshape({b, Lp, H, P});
  if (pad) y = y.narrow(1, 0, L);
  if (D_in.defined()) y = y + D_in.view({1, 1, H, 1}) * x;
  return y;
}

torch::Tensor ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& B,
                       const torch::Tensor& C, const torch::Tensor& D, int64_t chunk_size) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(x) && ssd_scan_kernel_enabled() && cuda_ops::ssd_scan_supported(x, dt, A, B, C, D, chunk_size))
    return cuda_ops::ssd_scan(x, dt, A, B, C, D, chunk_size);
#endif
  return ssd_scan_reference(x, dt, A, B, C, D, chunk_size);
}

torch::Tensor softplus_dt_reference(const torch::Tensor& dt_raw, const torch::Tensor& dt_bias, double dt_min) {
  auto dt = torch::softplus(dt_raw + dt_bias.to(dt_raw.scalar_type()), /*beta=*/1, /*threshold=*/20);
  return torch::clamp_min(dt, dt_min);
}

torch::Tensor ssd_scan_softplus_dt(const torch::Tensor& x, const torch::Tensor& dt_raw, const torch::Tensor& dt_bias,
                                   const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& C,
                                   const torch::Tensor& D, int64_t chunk_size, double dt_min) {
#if MINIPUZZLE_HAVE_CUDA_KERNELS
  if (use_cuda_kernels(x) && ssd_scan_kernel_enabled() &&
      cuda_ops::ssd_scan_softplus_dt_supported(x, dt_raw, dt_bias, A, B, C, D, chunk_size))
    return cuda_ops::ssd_scan_softplus_dt(x, dt_raw, dt_bias, A, B, C, D, chunk_size, dt_min);
#endif
  return ssd_scan(x, softplus_dt_reference(dt_raw, dt_bias, dt_min), A, B, C, D, chunk_size);
}

torch::Tensor ssd_scan_sequential(const torch::Tensor& x_in, const torch::Tensor& dt_in, const torch::Tensor& A_in,
                                  const torch::Tensor& B_in, const torch::Tensor& C_in, const torch::Tensor& D_in) {
  const int64_t b = x_in.size(0), L = x_in.size(1), H = x_in.size(2), P = x_in.size(3);
  const int64_t G = B_in.size(2), N = B_in.size(3), R = H / G;
  auto x = x_in.to(torch::kFloat64), dt = dt_in.to(torch::kFloat64), A = A_in.to(torch::kFloat64);
  auto B = B_in.to(torch::kFloat64).repeat_interleave(R, 2), C = C_in.to(torch::kFloat64).repeat_interleave(R, 2);
  auto h = torch::zeros({b, H, P, N}, x.options());
  std::vector<torch::Tensor> ys;
  for (int64_t t = 0; t < L; ++t) {
    auto dtt = dt.select(1, t);  // [b,H]
    h = h * torch::exp(dtt * A).view({b, H, 1, 1}) +
        (dtt.unsqueeze(-1) * x.select(1, t)).unsqueeze(-1) * B.select(1, t).unsqueeze(2);
    auto y = torch::matmul(h, C.select(1, t).unsqueeze(-1)).squeeze(-1);  // [b,H,P]
    if (D_in.defined()) y = y + D_in.to(torch::kFloat64).view({1, H, 1}) * x.select(1, t);
    ys.push_back(y);
  }
  return torch::stack(ys, 1).to(torch::kFloat32);
}

}  // namespace minipuzzle
