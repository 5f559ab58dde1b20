// bench_kernels [--quick] [--iters N] [--out FILE] [--meta k=v ...]
//
// Per op, fwd+bwd (the SSD scan also forward alone) on the TARGETS.md shapes (Nemotron-H-8B Mamba sizes, bf16):
// our kernel (kernel_dispatch on) against the LibTorch reference on the same
// GPU in the same run (kernels off). Milliseconds per call (mean over
// --iters after 3 warm-up calls), the ratio reference / kernel, and the
// peak memory above the inputs. The SSD scan also with its per-chunk products
// on CUDA cores instead of tensor cores (kernel_cuda_cores,
// tensor_core_speedup). The optimizer step (global gradient norm + AdamW
// over the TARGETS.md student's parameters, bf16 with fp32 masters): the
// fused kernel against the reference's per-tensor ops. --quick: small shapes
// (a smoke run).
// Prints one JSON object. --out FILE also writes it there, rewritten after
// each op with "partial": true until the last (a time-boxed run that is cut
// keeps the ops it finished).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "minipuzzle/adamw_update.h"
#include "minipuzzle/causal_conv1d.h"
#include "minipuzzle/forward_kl.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/kernel_dispatch.h"
#include "minipuzzle/rms_norm.h"
#include "minipuzzle/ssd_scan.h"
#include "run_metadata.h"

#if __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define MINIPUZZLE_BENCH_MEMORY 1
#endif

using namespace minipuzzle;
using nlohmann::json;

namespace {

int64_t allocated_now() {
#ifdef MINIPUZZLE_BENCH_MEMORY
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return stats.allocated_bytes[0].current;
#else
  return 0;
#endif
}

void reset_peak() {
#ifdef MINIPUZZLE_BENCH_MEMORY
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
#endif
}

int64_t peak_now() {
#ifdef MINIPUZZLE_BENCH_MEMORY
  return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;
#else
  return 0;
#endif
}

// Mean milliseconds of f() and the peak allocation above what was live before.
json time_op(const std::function<void()>& f, int iters) {
  for (int i = 0; i < 3; ++i) f();
  torch::cuda::synchronize();
  const int64_t base = allocated_now();
  reset_peak();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  torch::cuda::synchronize();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
  return {{"ms", ms}, {"peak_extra_gib", static_cast<double>(peak_now() - base) / (1 << 30)}};
}

json compare(const std::string& op, const json& shape, const std::function<void()>& f, int iters) {
  set_cuda_kernels_enabled(true);
  json kernel = time_op(f, iters);
  set_cuda_kernels_enabled(false);
  json reference = time_op(f, iters);
  set_cuda_kernels_enabled(true);
  return {{"op", op},
          {"shape", shape},
          {"kernel", kernel},
          {"reference", reference},
          {"speedup", reference["ms"].get<double>() / kernel["ms"].get<double>()}};
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int iters = 20;
  std::string out_file;
  json out = {{"benchmark", "kernels_fwd_bwd"}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::max(1, std::stoi(argv[++i]));
    } else if (a == "--out" && i + 1 < argc) {
      out_file = argv[++i];
    } else if (a == "--meta" && i + 1 < argc) {
      if (!bench::add_meta_note(out, argv[++i], "bench_kernels")) return 2;
    } else {
      std::cerr << "bench_kernels: unknown argument " << a << "\n";
      return 2;
    }
  }
  bench::add_run_metadata(out);
  if (!torch::cuda::is_available() || !cuda_kernels_compiled()) {
    out["skipped"] = !cuda_kernels_compiled() ? "built without kernels/" : "no CUDA device";
    std::cout << out.dump(2) << "\n";
    if (!out_file.empty()) std::ofstream(out_file) << out.dump(2) << "\n";
    return 0;
  }
  torch::manual_seed(0);
  const auto bf16 = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  json ops = json::array();
  // Each finished op goes to --out at once (written whole: a temporary, then a rename).
  auto write_out = [&](bool partial) {
    if (out_file.empty()) return;
    json o = out;
    o["ops"] = ops;
    o["iters"] = iters;
    o["quick"] = quick;
    if (partial) o["partial"] = true;
    const std::string tmp = out_file + ".tmp";
    std::ofstream(tmp) << o.dump(2) << "\n";
    std::rename(tmp.c_str(), out_file.c_str());
  };
  auto record = [&](json op) {
    ops.push_back(std::move(op));
    write_out(/*partial=*/true);
  };

  {  // causal conv1d + SiLU: b=1, L=8192, 10240 channels, width 4
    const int64_t L = quick ? 1024 : 8192, C = quick ? 1280 : 10240;
    auto x = torch::randn({1, L, C}, bf16).requires_grad_(true);
    auto w = (torch::randn({C, 1, 4}, bf16) * 0.5).requires_grad_(true);
    auto b = torch::randn({C}, bf16).requires_grad_(true);
    auto g = torch::randn({1, L, C}, bf16);
    record(compare("causal_conv1d_silu", {{"b", 1}, {"L", L}, {"channels", C}, {"width", 4}, {"dtype", "bf16"}},
                          [&] {
                            auto y = causal_conv1d_silu(x, w, b);
                            auto grads = torch::autograd::grad({y}, {x, w, b}, {g});
                          },
                          iters));
  }
  {  // gated RMSNorm, 8 groups: 8192 x 8192
    const int64_t rows = quick ? 1024 : 8192, D = quick ? 1024 : 8192;
    auto x = torch::randn({rows, D}, bf16).requires_grad_(true);
    auto z = torch::randn({rows, D}, bf16).requires_grad_(true);
    auto w = (1 + 0.1 * torch::randn({D}, bf16)).requires_grad_(true);
    auto g = torch::randn({rows, D}, bf16);
    record(compare("gated_rms_norm", {{"rows", rows}, {"channels", D}, {"groups", 8}, {"dtype", "bf16"}},
                          [&] {
                            auto y = gated_rms_norm(x, z, w, D / 8, 1e-5);
                            auto grads = torch::autograd::grad({y}, {x, z, w}, {g});
                          },
                          iters));
  }
  struct SsdRun {
    bool backward;
    int64_t batch, len;
  };
  // SSD chunked scan, 8B shapes: the TARGETS.md rows (b=1, L=8192 forward and
  // fwd+bwd; b=4, L=2048 fwd+bwd).
  const SsdRun ssd_runs[] = {{false, 1, quick ? 1024 : 8192}, {true, 1, quick ? 1024 : 8192},
                             {true, quick ? 2 : 4, quick ? 512 : 2048}};
  for (const SsdRun& r : ssd_runs) {
    const bool backward = r.backward;
    const int64_t Bt = r.batch, L = r.len;
    set_ssd_scan_kernel_enabled(true);  // opt-in in the library until measured
    const int64_t H = quick ? 16 : 128, P = 64, G = 8, N = 128;
    // As the mixer has them: x, B, C and the raw dt are slices of one tensor
    // (its conv'ed part and in_proj's dt columns), dt's softplus inside the op.
    auto xbcdt = torch::randn({Bt, L, H * P + 2 * G * N + H}, bf16) * 0.5;
    if (backward) xbcdt.requires_grad_(true);
    auto x = xbcdt.narrow(-1, 0, H * P).reshape({Bt, L, H, P});
    auto B = xbcdt.narrow(-1, H * P, G * N).reshape({Bt, L, G, N});
    auto C = xbcdt.narrow(-1, H * P + G * N, G * N).reshape({Bt, L, G, N});
    auto dt_raw = xbcdt.narrow(-1, H * P + 2 * G * N, H);
    auto dt_bias = (torch::randn({H}, bf16.dtype(torch::kFloat32)) - 2).requires_grad_(backward);
    auto A = -torch::exp(torch::randn({H}, bf16.dtype(torch::kFloat32)) * 0.5);
    auto D = torch::randn({H}, bf16.dtype(torch::kFloat32));
    auto g = torch::randn({Bt, L, H, P}, bf16.dtype(torch::kFloat32));
    const auto run = [&] {
      auto y = ssd_scan_softplus_dt(x, dt_raw, dt_bias, A, B, C, D, 128, 1e-3);
      if (backward) {
        auto grads = torch::autograd::grad({y}, {xbcdt, dt_bias}, {g});
      }
    };
    json op = compare(backward ? "ssd_scan_fwd_bwd" : "ssd_scan_forward",
                      {{"b", Bt}, {"L", L}, {"heads", H}, {"head_dim", P}, {"groups", G}, {"state", N},
                       {"chunk", 128}, {"dtype", "bf16"}, {"dt", "softplus(raw + bias) clamped, inside the op"}},
                      run, iters);
    // The same kernels with the per-chunk products on CUDA cores (fp32).
    set_ssd_tensor_cores_enabled(false);
    op["kernel_cuda_cores"] = time_op(run, iters);
    set_ssd_tensor_cores_enabled(true);
    op["tensor_core_speedup"] = op["kernel_cuda_cores"]["ms"].get<double>() / op["kernel"]["ms"].get<double>();
    record(op);
  }
  {  // KD loss + student-logit gradient (forward KL, reverse KL, JSD): 8192 tokens x 131072 vocab
    const int64_t rows = quick ? 512 : 8192, V = quick ? 32768 : 131072;
    auto s = torch::randn({rows, V}, bf16) * 4, t = torch::randn({rows, V}, bf16) * 4;
    const std::pair<const char*, KdLoss> losses[] = {
        {"forward_kl", KdLoss::ForwardKl}, {"reverse_kl", KdLoss::ReverseKl}, {"jsd", KdLoss::Jsd}};
    for (const auto& [name, loss] : losses) {
      const KdLoss l = loss;
      record(compare(name, {{"tokens", rows}, {"vocab", V}, {"dtype", "bf16"}},
                            [&] { auto r = logit_divergence(s, t, l, 1.0, 1.0 / static_cast<double>(rows), true); },
                            iters));
    }
  }
  {  // the same against a top-k teacher cache (k = 512 of 131072)
    const int64_t rows = quick ? 512 : 8192, V = quick ? 32768 : 131072, k = 512;
    auto s = torch::randn({rows, V}, bf16) * 4;
    auto t = torch::randn({rows, V}, bf16.dtype(torch::kFloat32)) * 4;
    auto top_k = t.topk(k, -1);
    auto vals = std::get<0>(top_k), ids = std::get<1>(top_k);
    auto rest = torch::logsumexp(t.scatter(1, ids, -INFINITY), -1);
    t = torch::Tensor();  // only the cache is kept
    const std::pair<const char*, KdLoss> losses[] = {
        {"forward_kl_topk", KdLoss::ForwardKl}, {"reverse_kl_topk", KdLoss::ReverseKl}, {"jsd_topk", KdLoss::Jsd}};
    for (const auto& [name, loss] : losses) {
      const KdLoss l = loss;
      record(compare(name, {{"tokens", rows}, {"vocab", V}, {"k", k}, {"dtype", "bf16"}},
                            [&] {
                              auto r = topk_divergence(s, vals, ids, rest, l, 1.0, 1.0 / static_cast<double>(rows),
                                                       true);
                            },
                            iters));
    }
  }
  {  // AdamW step (gradient norm for the clip, then the update) over the TARGETS.md student: 0.63B parameters
    ModelConfig c;
    c.vocab_size = quick ? 32768 : 131072;
    c.hidden_size = quick ? 512 : 1536;
    c.pattern = "M-M-M-M*-M-M-";
    c.intermediate_size = quick ? 2048 : 6144;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 8;
    c.head_dim = 128;
    c.mamba_num_heads = quick ? 16 : 48;
    c.mamba_head_dim = 64;
    c.ssm_state_size = 128;
    c.n_groups = 8;
    HybridLM model(c);
    model->to(torch::kCUDA, torch::kBFloat16);
    AdamWTensors t;
    int64_t n = 0;
    for (auto& p : model->named_parameters()) {
      auto param = p.value().detach();
      param.mutable_grad() = torch::randn_like(param) * 1e-3;
      t.params.push_back(param);
      t.masters.push_back(param.to(torch::kFloat32));
      t.exp_avgs.push_back(torch::zeros_like(t.masters.back()));
      t.exp_avg_sqs.push_back(torch::zeros_like(t.masters.back()));
      t.decay.push_back(param.dim() >= 2);
      n += param.numel();
    }
    AdamWUpdate update(std::move(t));
    AdamWStepFactors f;
    f.lr = 1e-5;
    f.weight_decay = 0.1;
    f.max_grad_norm = 1.0;
    record(compare("adamw_step",
                          {{"parameters", n},
                           {"tensors", update.tensors().params.size()},
                           {"dtype", "bf16"},
                           {"state", "fp32 master, exp_avg, exp_avg_sq"},
                           {"includes", "global grad norm and clip factor on the device (the trainer's step)"}},
                          [&] {
                            f.grad_sum_of_squares = update.grad_sum_of_squares_on_device();
                            update.apply(f);
                            ++f.step;
                          },
                          iters));
  }
  write_out(/*partial=*/false);
  out["ops"] = ops;
  out["iters"] = iters;
  out["quick"] = quick;
  std::cout << out.dump(2) << "\n";
  return 0;
}
