// minipuzzle search DIR (--scores SCORES_DIR | --uniform-scores) --budget SIZE --out candidates.json
//   [deployment flags] [--space paper|depth|full] [--axis name=min:max:step ...] [--top-k K]
//   [--rank-data PREFIX --rank-tokens N ...]
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <optional>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/architecture_search.h"
#include "minipuzzle/candidate_ranking.h"
#include "minipuzzle/candidates_json.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/importance_scores.h"
#include "minipuzzle/progress.h"
#include "residency_option.h"

namespace minipuzzle::cli {

namespace {
std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.3f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  return fmt::format("{:.1f}K", n / 1e3);
}

// "3.2B", "800M", "1.5e9", "120000": a positive parameter count (K, M, B or
// G suffixes, decimal).
double parse_param_count(const std::string& text) {
  const std::string what = "--max-active-params '" + text + "'";
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    throw InputError(what + ": expected a parameter count such as 3.2B, 800M or 1.5e9");
  }
  std::string suffix = text.substr(used);
  double scale = 1;
  if (suffix == "K" || suffix == "k") scale = 1e3;
  else if (suffix == "M" || suffix == "m") scale = 1e6;
  else if (suffix == "B" || suffix == "b" || suffix == "G" || suffix == "g") scale = 1e9;
  else if (!suffix.empty()) throw InputError(what + ": unknown suffix '" + suffix + "'; expected K, M or B");
  if (!(v > 0) || !std::isfinite(v * scale)) throw InputError(what + ": must be a positive count");
  return v * scale;
}
}  // namespace

int cmd_search(const Args& args) {
  const std::string usage =
      "minipuzzle search DIR (--scores SCORES_DIR | --uniform-scores) --budget SIZE --out candidates.json\n"
      "       [--precision P] [--kv-precision P] [--state-precision P] [--context N] [--batch N] [--workspace SIZE]\n"
      "       [--space paper|depth|full] [--axis name=min:max:step ...] [--max-depth-reduction R]\n"
      "       [--max-width-reduction R] [--maximal-only] [--min-budget-use F] [--top-k K] [--max-active-params N]\n"
      "       [--rank-data PREFIX [--rank-tokens N] [--rank-seq-len N] [--rank-by agreement|accuracy|loss|kl]\n"
      "        [--max-device-memory SIZE|PCT] [--dry-run]]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "parent checkpoint directory, or a directory / file with config.json only")
      ("scores", po::value<std::string>(), "scores directory from `minipuzzle score` on this parent")
      ("uniform-scores", po::bool_switch(), "plan without scores: every layer counts the same, widths uninformative")
      ("budget", po::value<std::string>(), "memory per inference instance, e.g. 31.7GiB")
      ("out", po::value<std::string>(), "candidates file to write")
      ("precision", po::value<std::string>()->default_value("bf16"), "weight precision: bf16, fp16, fp32; fp8, nvfp4, int4 as `export --dtype` writes them (projections converted, the rest bf16); fp4: every parameter 4 bits (the paper's accounting)")
      ("kv-precision", po::value<std::string>()->default_value("bf16"), "KV cache precision (the same names)")
      ("state-precision", po::value<std::string>()->default_value("bf16"), "Mamba SSM and conv state precision")
      ("context", po::value<int64_t>()->default_value(8192), "tokens per sequence in the KV cache")
      ("batch", po::value<int64_t>()->default_value(1), "concurrent sequences")
      ("workspace", po::value<std::string>()->default_value("0"), "extra bytes (activations, headroom)")
      ("space", po::value<std::string>()->default_value("paper"),
       "starting space: paper (layer counts x FFN 3/4..1 step 1024), depth (layer counts), full (every axis)")
      ("axis", po::value<std::vector<std::string>>()->composing(),
       "override one axis: mamba_layers|attention_layers|mlp_layers|ffn|hidden|mamba_heads|mamba_head_dim|"
       "attention_heads|moe_layers|moe_experts|moe_expert_ffn|moe_shared_ffn = min:max[:step] or a value (repeatable)")
      ("max-depth-reduction", po::value<double>()->default_value(1.0), "keep at least (1-R) of the layers")
      ("max-width-reduction", po::value<double>()->default_value(1.0), "keep at least (1-R) of each width")
      ("maximal-only", po::bool_switch(), "drop candidates that a one-step-larger neighbour dominates")
      ("min-budget-use", po::value<double>()->default_value(0.0), "drop candidates using less of the budget")
      ("top-k", po::value<int64_t>()->default_value(10), "candidates to keep")
      ("max-active-params", po::value<std::string>(),
       "at most this many parameters used per token (MoE: num_experts_per_tok routed experts per layer), "
       "e.g. 3.2B; beside the memory budget")
      ("rank-data", po::value<std::string>(), "dataset to rank the top K on (prunes each in memory)")
      ("rank-tokens", po::value<uint64_t>()->default_value(1 << 20), "predicted tokens for ranking")
      ("rank-seq-len", po::value<int64_t>()->default_value(2048), "window length for ranking")
      ("rank-batch", po::value<int64_t>()->default_value(1), "windows per forward pass for ranking")
      ("rank-by", po::value<std::string>()->default_value("agreement"), "agreement | accuracy | loss | kl")
      ("dtype", po::value<std::string>()->default_value("fp32"), "compute dtype for ranking: fp32 | bf16 | fp16")
      ("device", po::value<std::string>()->default_value("cpu"), "device for ranking: cpu | cuda | cuda:N");
  opts.add(residency_options());
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  if (!vm.count("rank-data")) {
    for (const char* k : {"rank-tokens", "rank-seq-len", "rank-batch", "rank-by", "dtype", "device"})
      if (!vm[k].defaulted()) throw InputError(fmt::format("--{} ranks on data: it needs --rank-data", k));
    if (vm.count("max-device-memory") || vm["dry-run"].as<bool>())
      throw InputError(fmt::format("--{} plans the ranking's memory: it needs --rank-data",
                                   vm.count("max-device-memory") ? "max-device-memory" : "dry-run"));
  }
  const RankOptions ro{vm["rank-tokens"].as<uint64_t>(), vm["rank-seq-len"].as<int64_t>(),
                       vm["rank-batch"].as<int64_t>(), vm["rank-by"].as<std::string>()};
  const auto rank_dtype = parse_model_dtype(vm["dtype"].as<std::string>());
  const auto rank_device = parse_device(vm["device"].as<std::string>());
  const std::string dir = vm["dir"].as<std::string>();
  // The ranking's residency, planned from the config alone and printed
  // first; --dry-run stops there (no scores, data or output needed).
  ResidencyPlan residency;
  if (vm.count("rank-data")) {
    if (ro.seq_len <= 0 || ro.batch <= 0) throw InputError("--rank-seq-len and --rank-batch must be positive");
    const uint64_t windows = std::max<uint64_t>(ro.tokens / static_cast<uint64_t>(ro.seq_len), 1);
    residency = plan_forward(vm, dir, rank_dtype, rank_device, ro.batch, ro.seq_len,
                             static_cast<int64_t>((windows + ro.batch - 1) / ro.batch),
                             rank_residency_needs(ModelConfig::load(dir), ro, rank_dtype));
    if (vm["dry-run"].as<bool>()) {
      std::cout << residency.describe() << std::endl;
      return 0;
    }
  }
  require(vm, "budget", usage);
  require(vm, "out", usage);
  const bool uniform = vm["uniform-scores"].as<bool>();
  if (vm.count("scores") == uniform)
    throw InputError("give exactly one of --scores SCORES_DIR and --uniform-scores");
  if (uniform && vm.count("rank-data")) throw InputError("--rank-data needs --scores (pruning picks units by score)");
  const std::string out = vm["out"].as<std::string>();
  check_output_file(out, "--out");
  // Ranking's inputs are checked before the search, not after it.
  std::shared_ptr<IndexedDataset> rank_data;
  if (vm.count("rank-data")) {
    rank_data = IndexedDataset::open(vm["rank-data"].as<std::string>());
    check_rank_options(ro, *rank_data);
  }
  const ModelConfig parent = ModelConfig::load(dir);
  std::optional<ImportanceScores> scores;
  SearchImportance importance = SearchImportance::uniform(parent);
  if (!uniform) {
    scores = load_importance_for(vm["scores"].as<std::string>(), dir);
    importance = scores->to_search_importance(parent);
  }

  SearchOptions so;
  so.deployment.weights = parse_precision(vm["precision"].as<std::string>(), "--precision");
  so.deployment.kv_cache = parse_precision(vm["kv-precision"].as<std::string>(), "--kv-precision");
  so.deployment.state = parse_precision(vm["state-precision"].as<std::string>(), "--state-precision");
  so.deployment.context = vm["context"].as<int64_t>();
  so.deployment.batch = vm["batch"].as<int64_t>();
  so.deployment.workspace_bytes = parse_bytes(vm["workspace"].as<std::string>(), "--workspace");
  so.deployment.validate();
  so.budget_bytes = parse_bytes(vm["budget"].as<std::string>(), "--budget");
  so.top_k = vm["top-k"].as<int64_t>();
  if (vm.count("max-active-params")) so.max_active_params = parse_param_count(vm["max-active-params"].as<std::string>());

  const std::string space_name = vm["space"].as<std::string>();
  CandidateSpace space;
  if (space_name == "paper") space = CandidateSpace::paper_grid(parent);
  else if (space_name == "depth") space = CandidateSpace::depth_only(parent);
  else if (space_name == "full") space = CandidateSpace::full(parent);
  else throw InputError("--space '" + space_name + "': expected paper, depth or full");
  if (vm.count("axis"))
    for (const auto& a : vm["axis"].as<std::vector<std::string>>()) space.set_axis(a, parent);
  space.max_depth_reduction = vm["max-depth-reduction"].as<double>();
  space.max_width_reduction = vm["max-width-reduction"].as<double>();
  space.maximal_only = vm["maximal-only"].as<bool>();
  space.min_budget_use = vm["min-budget-use"].as<double>();
  space.validate(parent);

  // Every input checked: the plan is the first line of output.
  if (rank_data) std::cout << residency.describe() << std::endl;
  SearchResult result = search_architectures(parent, importance, space, so);
  std::cout << fmt::format("searched {} candidates, {} fit {}; kept the top {}\n", result.evaluated,
                           result.feasible, format_bytes(so.budget_bytes), result.candidates.size());

  if (rank_data) {
    Progress progress("rank", result.candidates.size(), "cand");
    const uint64_t held = rank_candidates_on_data(
        dir, rank_dtype, rank_device, residency, *scores, result, *rank_data, ro,
        [&](int64_t done, int64_t) { progress.update(static_cast<uint64_t>(done)); });
    std::cout << fmt::format("ranked {} candidates; weights held at most {} ({} bytes)\n", result.candidates.size(),
                             format_bytes(static_cast<double>(held)), held);
  }
  save_candidates(result, out);

  std::cout << fmt::format("{:>4}  {:>10}  {:>8}  {:>10}  {:<14}  {}\n", "rank", "memory", "params", "proxy",
                           "layers M/*/-", vm.count("rank-data") ? "measured" : "widths");
  for (const Candidate& c : result.candidates) {
    const ModelConfig& k = c.config;
    std::string extra =
        c.measured.empty()
            ? fmt::format("ffn {} hidden {} mamba {}x{} attn {}", k.intermediate_size, k.hidden_size,
                          k.mamba_num_heads, k.mamba_head_dim, k.num_attention_heads)
            : fmt::format("agree {:.4f} acc {:.4f} loss {:.4f} kl {:.4f}", c.measured.at("agreement"),
                          c.measured.at("accuracy"), c.measured.at("loss"), c.measured.at("kl"));
    if (parent.has_moe())
      extra += fmt::format("; E {} experts {} ffn {} shared {}, {} active", k.count(LayerType::Moe), k.n_routed_experts,
                           k.moe_intermediate_size, k.moe_shared_expert_intermediate_size,
                           human_count(static_cast<double>(c.params.active)));
    std::cout << fmt::format("{:>4}  {:>10}  {:>8}  {:>10.6f}  {:<14}  {}\n", c.rank, format_bytes(c.memory.total),
                             human_count(static_cast<double>(c.params.total)), c.proxy_score,
                             fmt::format("{}/{}/{}", k.count(LayerType::Mamba), k.count(LayerType::Attention),
                                         k.count(LayerType::Mlp)),
                             extra);
  }
  std::cout << "wrote " << out << "\n";
  return 0;
}

}  // namespace minipuzzle::cli
