// bench_search [CONFIG.json] [--meta key=value ...]
//
// Times search_architectures() on the Nemotron-H-56B config under the paper's
// setting (4-bit weights, FP8 KV, bf16 state, 1M context, batch 1, budget
// 31.7 GiB) against search_architectures_reference(), which builds every
// candidate's ModelConfig and runs the full memory model, in the same run.
// Prints one JSON object with the run's date, commit and machine
// (run_metadata.h); --meta KEY=VALUE adds notes.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "minipuzzle/architecture_search.h"
#include "minipuzzle/candidates_json.h"
#include "run_metadata.h"

using namespace minipuzzle;
using nlohmann::json;

namespace {

struct Timed {
  SearchResult result;
  std::vector<double> seconds;
};

template <class F>
Timed time_runs(int repeats, F&& run) {
  Timed t;
  for (int i = 0; i < repeats; ++i) {
    auto start = std::chrono::steady_clock::now();
    t.result = run();
    t.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.seconds.begin(), t.seconds.end());
  return t;
}

// The space as searched, in --axis syntax, plus its bounds and filters when set.
std::string axes_text(const CandidateSpace& s) {
  const std::pair<const char*, const IntAxis*> axes[] = {
      {"mamba_layers", &s.mamba_layers}, {"attention_layers", &s.attention_layers}, {"mlp_layers", &s.mlp_layers},
      {"ffn", &s.ffn},                   {"hidden", &s.hidden},                     {"mamba_heads", &s.mamba_heads},
      {"mamba_head_dim", &s.mamba_head_dim}, {"attention_heads", &s.attention_heads}};
  std::string out;
  for (const auto& [name, axis] : axes) out += (out.empty() ? "" : " ") + std::string(name) + "=" + axis->to_string();
  auto number = [](double v) {
    std::string t = std::to_string(v);
    return t.substr(0, t.find_last_not_of('0') + 1);
  };
  if (s.max_depth_reduction < 1) out += " max_depth_reduction=" + number(s.max_depth_reduction);
  if (s.max_width_reduction < 1) out += " max_width_reduction=" + number(s.max_width_reduction);
  if (s.min_budget_use > 0) out += " min_budget_use=" + number(s.min_budget_use);
  if (s.maximal_only) out += " maximal_only";
  return out;
}

json summary(const Timed& t) {
  const double median = t.seconds[t.seconds.size() / 2];
  return {{"evaluated", t.result.evaluated},
          {"feasible", t.result.feasible},
          {"runs", t.seconds.size()},
          {"seconds_min", t.seconds.front()},
          {"seconds_median", median},
          {"candidates_per_second", static_cast<double>(t.result.evaluated) / median}};
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/configs/nemotron-h-56b.config.json";
  json out = json::object();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--meta" && i + 1 < argc) {
      if (!bench::add_meta_note(out, argv[++i], "bench_search")) return 2;
    } else {
      config_path = a;
    }
  }
  const ModelConfig parent = ModelConfig::load(config_path);
  const SearchImportance importance = SearchImportance::synthetic(parent, 1);
  SearchOptions o;
  o.deployment.weights = Precision::Fp4;
  o.deployment.kv_cache = Precision::Fp8;
  o.deployment.state = Precision::Bf16;
  o.deployment.context = 1000000;
  o.deployment.batch = 1;
  o.budget_bytes = 31.7 * kGiB;
  o.top_k = 10;

  const CandidateSpace grid = CandidateSpace::paper_grid(parent);
  const Timed fast = time_runs(7, [&] { return search_architectures(parent, importance, grid, o); });
  const Timed reference = time_runs(2, [&] { return search_architectures_reference(parent, importance, grid, o); });
  const bool same = candidates_to_json(fast.result).dump() == candidates_to_json(reference.result).dump();

  // Filters on the same grid: candidates that leave no room for one more
  // step on any axis, and that with a depth bound.
  CandidateSpace maximal = grid;
  maximal.maximal_only = true;
  const Timed fast_maximal = time_runs(3, [&] { return search_architectures(parent, importance, maximal, o); });
  CandidateSpace maximal_depth = maximal;
  maximal_depth.max_depth_reduction = 0.25;
  const Timed fast_maximal_depth = time_runs(3, [&] { return search_architectures(parent, importance, maximal_depth, o); });

  // A wider space: the grid plus hidden 7168..8192 step 256 and Mamba heads
  // 224..256 step 8 (25x the points).
  CandidateSpace wide = grid;
  wide.set_axis("hidden=7168:8192:256", parent);
  wide.set_axis("mamba_heads=224:256:8", parent);
  const Timed fast_wide = time_runs(3, [&] { return search_architectures(parent, importance, wide, o); });

  out["benchmark"] = "search";
  out["config"] = "nemotron-h-56b";
  out["setting"] = {{"weights", "fp4"}, {"kv_cache", "fp8"}, {"state", "bf16"}, {"context", 1000000},
                    {"batch", 1}, {"budget_gib", 31.7}, {"top_k", o.top_k}};
  out["paper_grid"] = {{"axes", axes_text(grid)},
                       {"grid_points", grid.grid_size()},
                       {"fast", summary(fast)},
                       {"reference", summary(reference)},
                       {"speedup_median", reference.seconds[reference.seconds.size() / 2] /
                                              fast.seconds[fast.seconds.size() / 2]},
                       {"same_top_k", same},
                       {"best", fast.result.candidates.at(0).why}};
  out["paper_grid_maximal_only"] = summary(fast_maximal);
  out["paper_grid_maximal_only"]["axes"] = axes_text(maximal);
  out["paper_grid_maximal_only_depth_25pct"] = summary(fast_maximal_depth);
  out["paper_grid_maximal_only_depth_25pct"]["axes"] = axes_text(maximal_depth);
  out["wide_grid"] = {{"axes", axes_text(wide)},
                      {"grid_points", wide.grid_size()},
                      {"fast", summary(fast_wide)}};
  bench::add_run_metadata(out);
  std::cout << out.dump(2) << "\n";
  return same ? 0 : 1;
}
