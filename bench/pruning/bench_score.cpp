// bench_score [--layers N] [--hidden D] [--vocab V] [--seq-len L] [--batch B] [--batches K]
//             [--device cpu|cuda] [--dtype fp32|bf16] [--repeats R] [--meta key=value ...]
//
// Importance scoring cost on a random Nemotron-H-shaped model, against a
// plain forward pass (embed -> layers -> norm_f -> lm_head) in the same run:
//   stats_overhead   forward with the width-statistics observer / plain forward - 1
//                    (target: <= 0.15)
//   layer_scoring    the drop-one pass (full pass + one suffix pass per layer;
//                    all metrics, and mse only, i.e. no LM head per dropped
//                    layer) / plain forward, next to its ideal,
//                    1 + (n-1)/2 forwards (one suffix per layer), and the naive
//                    n + 1 full forwards
//   *_in_required    the drop-one pass / the forwards it cannot avoid, timed
//                    alone: the full pass and one suffix pass per layer
//                    through norm_f, plus the LM head on each of them when
//                    kl/loss are measured (so the rest is the comparison)
//   *_system_seconds kernel time of each phase (getrusage), with its minor
//                    page faults: vocabulary-wide temporaries freshly mapped
//                    per chunk show up here
// Prints one JSON object, with the run's date, commit and machine (run_metadata.h).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/resource.h>

#include "minipuzzle/layer_importance.h"
#include "run_metadata.h"
#include "minipuzzle/width_statistics.h"

using namespace minipuzzle;
using nlohmann::json;

namespace {

template <class F>
double median_seconds(int repeats, F&& f) {
  std::vector<double> s;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

struct Usage {
  double system_seconds = 0;
  long minor_faults = 0;
};

Usage usage_now() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return {static_cast<double>(u.ru_stime.tv_sec) + 1e-6 * static_cast<double>(u.ru_stime.tv_usec), u.ru_minflt};
}

// Median wall seconds of f, and its system time and minor faults per run.
template <class F>
std::pair<double, Usage> timed(int repeats, F&& f) {
  const Usage u0 = usage_now();
  const double t = median_seconds(repeats, f);
  const Usage u1 = usage_now();
  return {t, {(u1.system_seconds - u0.system_seconds) / repeats, (u1.minor_faults - u0.minor_faults) / repeats}};
}

}  // namespace

int main(int argc, char** argv) {
  int64_t layers = 12, hidden = 256, vocab = 4096, seq_len = 256, batch = 2, batches = 2;
  int repeats = 5;
  std::string device_name = "cpu", dtype_name = "fp32";
  json out = json::object();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--layers") layers = std::stoll(v);
    else if (a == "--hidden") hidden = std::stoll(v);
    else if (a == "--vocab") vocab = std::stoll(v);
    else if (a == "--repeats") repeats = std::stoi(v);
    else if (a == "--seq-len") seq_len = std::stoll(v);
    else if (a == "--batch") batch = std::stoll(v);
    else if (a == "--batches") batches = std::stoll(v);
    else if (a == "--device") device_name = v;
    else if (a == "--dtype") dtype_name = v;
    else if (a == "--meta") {
      if (!bench::add_meta_note(out, v, "bench_score")) return 2;
    } else {
      std::cerr << "bench_score: unknown argument " << a << "\n";
      return 2;
    }
  }
  // The published pattern's mix (M and - alternate, * every ~8 layers), scaled down.
  std::string pattern;
  for (int64_t i = 0; i < layers; ++i) pattern += (i % 8 == 7) ? '*' : (i % 2 == 0 ? 'M' : '-');
  const ModelConfig cfg = ModelConfig::from_json(
      {{"vocab_size", vocab},           {"hidden_size", hidden},   {"hybrid_override_pattern", pattern},
       {"intermediate_size", 4 * hidden}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
       {"head_dim", hidden / 8},       {"mamba_num_heads", hidden / 16}, {"mamba_head_dim", 32},
       {"ssm_state_size", 64},         {"n_groups", 2},           {"chunk_size", 64}},
      "bench");
  HybridLM model(cfg);
  model->init_random(1);
  model->to(parse_device(device_name), parse_model_dtype(dtype_name));
  model->eval();
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  std::vector<torch::Tensor> inputs, targets;
  for (int64_t b = 0; b < batches; ++b) {
    auto rows = torch::randint(0, cfg.vocab_size, {batch, seq_len + 1}, gen, torch::kInt64).to(model->device());
    inputs.push_back(rows.narrow(1, 0, seq_len));
    targets.push_back(rows.narrow(1, 1, seq_len));
  }
  auto sync = [&] {
    if (model->device().is_cuda()) torch::cuda::synchronize();
  };
  auto forward_all = [&] {
    for (auto& x : inputs) model->forward(x).sum().item<float>();
    sync();
  };
  forward_all();  // warm-up
  const auto [t_forward, u_forward] = timed(repeats, forward_all);
  WidthStatistics stats(model, Aggregation{});
  model->observers().add(&stats);
  const double t_stats = median_seconds(repeats, forward_all);
  model->observers().remove(&stats);
  const int scoring_repeats = std::max(1, (repeats + 1) / 2);
  auto layer_scoring = [&](LayerMetrics metrics) {
    return timed(scoring_repeats, [&] {
      LayerImportance li(cfg, metrics);
      for (std::size_t b = 0; b < inputs.size(); ++b) li.add_batch(model, inputs[b], targets[b]);
      sync();
    });
  };
  const int64_t n = cfg.num_layers();
  // What the drop-one pass cannot avoid: the full pass once, then each
  // layer's suffix, all through norm_f; with_head adds the LM head on each.
  auto required = [&](bool with_head) {
    return timed(scoring_repeats, [&] {
      for (auto& x : inputs) {
        std::vector<torch::Tensor> block_input(n + 1);
        block_input[0] = model->embed(x);
        for (int64_t i = 0; i < n; ++i) block_input[i + 1] = model->run_layers(block_input[i], i, i + 1);
        auto full = model->final_norm(block_input[n]);
        if (with_head) full = model->lm_head(full);
        full.sum().item<float>();
        for (int64_t i = 0; i < n; ++i) {
          auto dropped = model->final_norm(model->run_layers(block_input[i], i + 1, n));
          if (with_head) dropped = model->lm_head(dropped);
          dropped.sum().item<float>();
        }
      }
      sync();
    });
  };
  const auto [t_layers, u_layers] = layer_scoring(LayerMetrics{});
  const auto [t_required, u_required] = required(true);
  const auto [t_layers_mse, u_layers_mse] = layer_scoring(LayerMetrics::parse("mse"));
  const auto [t_required_mse, u_required_mse] = required(false);
  const double tokens = static_cast<double>(batch * seq_len * batches);
  const double ideal = 1.0 + (layers - 1) / 2.0;
  out["model"] = {{"layers", layers}, {"pattern", pattern}, {"hidden", hidden}, {"vocab", cfg.vocab_size}};
  out["run"] = {{"seq_len", seq_len}, {"batch", batch}, {"batches", batches}, {"device", device_name},
                {"dtype", dtype_name}, {"threads", torch::get_num_threads()}, {"repeats", repeats}};
  out["forward_tokens_per_second"] = tokens / t_forward;
  out["stats_tokens_per_second"] = tokens / t_stats;
  out["stats_overhead"] = t_stats / t_forward - 1.0;
  out["layer_scoring_tokens_per_second"] = tokens / t_layers;
  out["layer_scoring_in_forwards"] = t_layers / t_forward;
  out["layer_scoring_mse_only_in_forwards"] = t_layers_mse / t_forward;
  out["layer_scoring_ideal_in_forwards"] = ideal;
  out["layer_scoring_naive_in_forwards"] = static_cast<double>(layers + 1);
  out["layer_scoring_in_required"] = t_layers / t_required;
  out["layer_scoring_mse_only_in_required"] = t_layers_mse / t_required_mse;
  auto usage = [](double wall, const Usage& u) {
    return json{{"wall_seconds", wall}, {"system_seconds", u.system_seconds}, {"minor_faults", u.minor_faults}};
  };
  out["per_run"] = {{"forward", usage(t_forward, u_forward)},
                    {"layer_scoring", usage(t_layers, u_layers)},
                    {"required", usage(t_required, u_required)},
                    {"layer_scoring_mse_only", usage(t_layers_mse, u_layers_mse)},
                    {"required_mse_only", usage(t_required_mse, u_required_mse)}};
  bench::add_run_metadata(out);
  std::cout << out.dump(2) << "\n";
  return 0;
}
