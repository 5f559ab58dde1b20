// bench_moe [--tokens T] [--hidden D] [--experts E] [--top-k K] [--expert-ffn F]
//           [--shared-ffn S] [--repeats R] [--threads N] [--meta key=value ...]
//
// The MoE (`E`) mixer's forward+backward on the CPU against the same work
// done dense: an MLP (relu^2, no gate) of width K*F + S, which has the
// FLOPs the MoE block spends per token (K routed experts of width F plus the
// shared expert of width S; the router's D*E is added to the dense MLP as a
// D x E linear). Both in one run, on the same tokens, fp32; the ratio
// moe/dense is what the issue asks to keep within 2x (the MoE side also
// pays the sort, gather, scatter-add and one small matmul per expert).
// Prints one JSON object with the run's date, commit and machine.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "minipuzzle/moe_mixer.h"
#include "run_metadata.h"

using namespace minipuzzle;
using nlohmann::json;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
std::vector<double> time_runs(int repeats, F&& f) {
  f();  // warm-up
  std::vector<double> s;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 4096, hidden = 512, experts = 24, top_k = 4, ffn = 256, shared = 512;
  int repeats = 7, threads = 0;
  json out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "bench_moe: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--tokens") tokens = std::stoll(next());
    else if (a == "--hidden") hidden = std::stoll(next());
    else if (a == "--experts") experts = std::stoll(next());
    else if (a == "--top-k") top_k = std::stoll(next());
    else if (a == "--expert-ffn") ffn = std::stoll(next());
    else if (a == "--shared-ffn") shared = std::stoll(next());
    else if (a == "--repeats") repeats = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--meta") {
      if (!bench::add_meta_note(out, next(), "bench_moe")) return 2;
    } else {
      std::cerr << "bench_moe: unknown argument " << a << "\n";
      return 2;
    }
  }
  if (threads > 0) torch::set_num_threads(threads);
  torch::manual_seed(0);

  nlohmann::json cj = {{"vocab_size", 8},
                       {"hidden_size", hidden},
                       {"hybrid_override_pattern", "E"},
                       {"n_routed_experts", experts},
                       {"moe_intermediate_size", ffn},
                       {"moe_shared_expert_intermediate_size", shared},
                       {"num_experts_per_tok", top_k}};
  const ModelConfig c = ModelConfig::from_json(cj, "bench");
  MoeMixer moe(c, ParameterInit{torch::kFloat32});
  for (auto& p : moe->parameters()) {
    torch::NoGradGuard g;
    p.normal_(0.0, 0.02);
  }
  const int64_t width = top_k * ffn + shared;
  auto up = (torch::randn({width, hidden}) * 0.02).requires_grad_(true);
  auto down = (torch::randn({hidden, width}) * 0.02).requires_grad_(true);
  auto router = (torch::randn({experts, hidden}) * 0.02).requires_grad_(true);
  auto x = torch::randn({tokens, hidden});
  auto grad_out = torch::randn({tokens, hidden});
  ObserverList none;

  auto moe_step = [&] {
    auto xi = x.clone().requires_grad_(true);
    moe->forward(xi, 0, none).backward(grad_out);
    moe->zero_grad();
  };
  auto dense_step = [&] {
    auto xi = x.clone().requires_grad_(true);
    auto logits = torch::linear(xi, router);  // the router's FLOPs
    auto y = torch::linear(torch::relu(torch::linear(xi, up)).square(), down) + logits.sum() * 0;
    y.backward(grad_out);
    up.mutable_grad().reset();
    down.mutable_grad().reset();
    router.mutable_grad().reset();
  };
  // Interleaved rounds, so drift in machine load hits both sides alike.
  std::vector<double> moe_s, dense_s;
  for (int r = 0; r < 3; ++r) {
    auto m = time_runs(std::max(1, repeats / 3), moe_step);
    auto d = time_runs(std::max(1, repeats / 3), dense_step);
    moe_s.insert(moe_s.end(), m.begin(), m.end());
    dense_s.insert(dense_s.end(), d.begin(), d.end());
  }
  const double flops = 3.0 * 2.0 * static_cast<double>(tokens) * hidden * (2.0 * width + experts);  // fwd + 2x bwd
  out["bench"] = "moe_block_forward_backward";
  out["config"] = {{"tokens", tokens},  {"hidden", hidden}, {"experts", experts}, {"top_k", top_k},
                   {"expert_ffn", ffn}, {"shared_ffn", shared}, {"dense_width", width},
                   {"threads", torch::get_num_threads()}, {"dtype", "fp32"}, {"device", "cpu"}};
  out["moe_seconds_median"] = median(moe_s);
  out["dense_seconds_median"] = median(dense_s);
  out["moe_seconds"] = moe_s;
  out["dense_seconds"] = dense_s;
  out["ratio_moe_over_dense"] = median(moe_s) / median(dense_s);
  out["dense_gflops_per_s"] = flops / median(dense_s) / 1e9;
  out["target_ratio"] = 2.0;
  bench::add_run_metadata(out);
  std::cout << out.dump(2) << "\n";
  return 0;
}
