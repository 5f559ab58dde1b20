#include "compress_preflight.h"

#include "compress_compare.h"

#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../distill_plan.h"
#include "compress_rerun.h"
#include "compress_stages.h"
#include "../training_command.h"
#include "local_processes.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/candidates_json.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/layer_importance.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/search_importance.h"
#include "minipuzzle/width_statistics.h"
#include "minipuzzle/window_order.h"

namespace minipuzzle::cli {

namespace fs = std::filesystem;
using nlohmann::json;

SearchOptions search_options_of(const CompressJob& j) {
  SearchOptions so;
  so.deployment.weights = parse_precision(j.search.precision, "search.precision");
  so.deployment.kv_cache = parse_precision(j.search.kv_precision, "search.kv_precision");
  so.deployment.state = parse_precision(j.search.state_precision, "search.state_precision");
  so.deployment.context = j.search.context;
  so.deployment.batch = j.search.batch;
  so.deployment.workspace_bytes = parse_bytes(j.search.workspace, "search.workspace");
  so.deployment.validate();
  so.budget_bytes = parse_bytes(j.search.budget, "search.budget");
  so.top_k = j.search.top_k;
  so.max_active_params = static_cast<double>(j.search.max_active_params);
  return so;
}

CandidateSpace search_space_of(const CompressJob& j, const ModelConfig& parent) {
  CandidateSpace space = j.search.space == "paper" ? CandidateSpace::paper_grid(parent)
                         : j.search.space == "depth" ? CandidateSpace::depth_only(parent)
                                                      : CandidateSpace::full(parent);
  for (const auto& [axis, value] : j.search.axes) {
    try {
      space.set_axis(axis + "=" + value, parent);
    } catch (const InputError& e) {
      throw InputError(fmt::format("search.axes.{}: {}", axis, e.what()));
    }
  }
  space.max_depth_reduction = j.search.max_depth_reduction;
  space.max_width_reduction = j.search.max_width_reduction;
  space.maximal_only = j.search.maximal_only;
  space.min_budget_use = j.search.min_budget_use;
  try {
    space.validate(parent);
  } catch (const InputError& e) {  // "axis ffn: ..." from the axes above: name the job's keys
    throw InputError(fmt::format("search.axes / search.max_*_reduction: {}", e.what()));
  }
  return space;
}

SearchResult feasibility_search(const CompressJob& j, const ModelConfig& parent) {
  try {
    return search_architectures(parent, SearchImportance::uniform(parent), search_space_of(j, parent),
                                search_options_of(j));
  } catch (const InputError& e) {
    // The search names its flag; a job user sets the key.
    std::string what = e.what();
    const std::string flag = "--max-active-params";
    if (const auto at = what.find(flag); at != std::string::npos)
      what.replace(at, flag.size(), "search.max_active_params");
    throw InputError(what);
  }
}

namespace {

// Each input named by its job key, before any stage spends time.
void check_key(const char* key, const std::function<void()>& open) {
  try {
    open();
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", key, e.what()));
  }
}

// The score stage's settings, parsed as `minipuzzle score` will parse them
// (the job parser is plain C++ and cannot).
void check_score_settings(const CompressJob& j) {
  check_key("score.aggregation", [&] { (void)Aggregation::parse(j.score.aggregation); });
  check_key("score.layer_metrics", [&] { (void)LayerMetrics::parse(j.score.layer_metrics); });
}

// Each distillation stage's command line through distill's own checks of its
// flags (a bad warmup found here, not after hours of earlier stages).
void check_distill_settings(const CompressJob& j) {
  for (const Stage& st : plan_stages(j)) {
    if (st.argv.empty() || st.argv[0] != "distill") continue;
    const bool is_long = st.stage == CompressStage::LongDistill;
    const CompressJob::DistillRun& run = is_long ? j.long_distill : j.short_distill;
    try {
      check_distill_args(Args(st.argv.begin() + 1, st.argv.end()));
    } catch (const InputError& e) {
      throw InputError(fmt::format("{}: {} (the stage runs `minipuzzle distill` with {}.tokens {} / "
                                   "(distill.global_batch {} x distill.seq_len {}) = {} steps, --warmup = {}.warmup_steps)",
                                   is_long ? "long_distill" : "short_distill", e.what(), is_long ? "long_distill" : "short_distill",
                                   run.tokens, j.distill.global_batch, j.distill.seq_len, j.steps_for(run.tokens),
                                   is_long ? "long_distill" : "short_distill"));
    }
  }
}

// What the stages refuse of the data, given the job's window lengths: the
// same conditions as distill's, search's ranking's and compare's.
void check_data_for_stages(const CompressJob& j) {
  const uint64_t train = IndexedDataset::open(j.train_data)->total_tokens();
  const uint64_t validation = IndexedDataset::open(j.validation_data)->total_tokens();
  uint64_t windows = 0;
  check_key("data.train", [&] { windows = WindowOrder(train, j.distill.seq_len, j.distill.seed).windows(); });
  if (windows < static_cast<uint64_t>(j.distill.global_batch))
    throw InputError(fmt::format("data.train holds {} windows of distill.seq_len {}, fewer than one "
                                 "distill.global_batch of {}",
                                 windows, j.distill.seq_len, j.distill.global_batch));
  const int64_t evaluate_seq = j.evaluate.seq_len > 0 ? j.evaluate.seq_len : j.distill.seq_len;
  for (const auto& [key, seq] : {std::pair<const char*, int64_t>{"distill.seq_len", j.distill.seq_len},
                                 {"rank.seq_len", j.rank.seq_len},
                                 {"evaluate.seq_len", evaluate_seq}})
    if (validation < static_cast<uint64_t>(seq) + 1)
      throw InputError(fmt::format("data.validation holds {} tokens, fewer than one window of {} {} + 1", validation,
                                   key, seq));
}

}  // namespace

void check_stage_settings(const CompressJob& j) {
  check_score_settings(j);
  check_distill_settings(j);
  // A cap too small for the compare stage's plan, refused now rather than
  // after every distillation has run.
  if (!j.max_device_memory.empty()) (void)plan_compare(j);
}

void prepare_job_directory(const CompressJob& j) {
  const auto& check = check_key;
  check_stage_settings(j);
  ModelConfig parent;
  check("teacher", [&] {
    parent = ModelConfig::load(j.teacher);
    CheckpointFiles::open(j.teacher);  // weights present and readable, not just a config
  });
  check("data.train", [&] {
    // One open: the score stage's windows must fit in it too.
    const uint64_t have = IndexedDataset::open(j.train_data)->total_tokens();
    const uint64_t need = static_cast<uint64_t>(j.score.samples) * static_cast<uint64_t>(j.score.seq_len) + 1;
    if (have < need)
      throw InputError(fmt::format("holds {} tokens, fewer than score.samples {} x score.seq_len {} (+1) = {}", have,
                                   j.score.samples, j.score.seq_len, need));
  });
  check("data.validation", [&] { IndexedDataset::open(j.validation_data); });
  check("compute.device", [&] { (void)parse_device(j.device); });  // a missing GPU, before job.json records it
  check("compute.dtype", [&] { (void)parse_model_dtype(j.dtype); });
  // One device per rank: cuda:0 .. cuda:N-1.
  if (j.distill.processes > 1 && j.device.rfind("cuda", 0) == 0 &&
      j.distill.processes > static_cast<int64_t>(torch::cuda::device_count()))
    throw InputError(fmt::format("distill.processes: {} processes need {} CUDA devices; this machine has {}",
                                 j.distill.processes, j.distill.processes, torch::cuda::device_count()));
  check_data_for_stages(j);
  feasibility_search(j, parent);

  const CompressPaths p(j.out);
  std::error_code ec;
  if (fs::exists(p.job_json, ec)) {
    continue_changed_job(j, job_change(j), /*apply=*/true);
    return;
  }
  if (fs::exists(p.out, ec) && !fs::is_empty(p.out, ec))
    throw InputError(fmt::format("{} exists and is not a compress job directory (no job.json); set a new out", j.out));
  fs::create_directories(p.out, ec);
  if (ec) throw InputError(fmt::format("cannot create the job directory {}: {}", j.out, ec.message()));
  write_file_atomic(p.job_json, recorded_job(j).dump(2) + "\n");
}

namespace {

std::string human_time(double s) {
  if (s < 90) return fmt::format("{:.0f} s", s);
  if (s < 5400) return fmt::format("{:.1f} min", s / 60);
  if (s < 2 * 86400) return fmt::format("{:.1f} h", s / 3600);
  return fmt::format("{:.1f} days", s / 86400);
}

std::string tokens_text(double n) {
  if (n >= 1e9) return fmt::format("{:.3g}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.3g}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.3g}K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

// Matmul FLOPs of one forward token: 2 per weight that multiplies (the
// embedding lookup does not). A token meets only its num_experts_per_tok
// routed experts: the active count, equal to the total without MoE layers.
double forward_flops(const ModelConfig& c) {
  const ParamCounts pc = count_parameters(c);
  return 2.0 * static_cast<double>(pc.active - pc.embeddings);
}

// "M/*/-" counts, and "M/*/-/E" when the parent has MoE layers.
std::string layer_counts(const ModelConfig& c, bool moe) {
  std::string s =
      fmt::format("{}/{}/{}", c.count(LayerType::Mamba), c.count(LayerType::Attention), c.count(LayerType::Mlp));
  return moe ? s + fmt::format("/{}", c.count(LayerType::Moe)) : s;
}

// The sustained FLOP/s assumed when the job does not say: measured orders of
// magnitude, not promises (the dry run prints which one it used). CPU: the
// demo job sustained 0.049 TFLOP/s on an idle 2-core EPYC VM (3.4e12 FLOP in
// 70 s); 0.04 leaves room for a busier or older machine.
double default_tflops(const CompressJob& j) {
  if (j.device == "cpu") return 0.04;
  return j.dtype == "bf16" ? 300.0 : 40.0;
}

std::string quote(const std::string& a) {
  if (!a.empty() && a.find_first_of(" \t'\"#$&*?;|<>()[]{}\\`!") == std::string::npos) return a;
  std::string q = "'";
  for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

int print_dry_run(const CompressJob& job) {
  CompressJob j = job;
  // Placeholders for a plan made before the data exists (validation defaults to train when run).
  if (j.validation_data.empty()) j.validation_data = j.train_data.empty() ? "<data.validation>" : j.train_data;
  if (j.train_data.empty()) j.train_data = "<data.train>";
  check_stage_settings(j);
  std::error_code ec;
  if (fs::exists(j.train_data + ".idx", ec) && fs::exists(j.validation_data + ".idx", ec)) check_data_for_stages(j);
  const ModelConfig parent = ModelConfig::load(j.teacher);
  const CompressPaths p(j.out);
  const SearchOptions so = search_options_of(j);
  const bool searched = fs::exists(p.candidates, ec);
  const SearchResult result = searched ? load_candidates(p.candidates) : feasibility_search(j, parent);
  const ParamCounts pp = count_parameters(parent);
  const MemoryBreakdown pm = memory_breakdown(parent, so.deployment);

  const bool moe = parent.has_moe();
  const std::string counts_head = moe ? "M/*/-/E" : "M/*/-";
  std::cout << fmt::format("compress plan (dry run): nothing is run or written\n");
  std::cout << fmt::format("teacher {}: {} layers ({} {}), {} parameters{}, {} at {} {}\n", j.teacher,
                           parent.num_layers(), counts_head, layer_counts(parent, moe),
                           tokens_text(static_cast<double>(pp.total)),
                           moe ? fmt::format(" ({} active per token: {} of {} routed experts per E layer)",
                                             tokens_text(static_cast<double>(pp.active)), parent.num_experts_per_tok,
                                             parent.n_routed_experts)
                               : "",
                           format_bytes(pm.total), j.search.precision,
                           fmt::format("(context {}, batch {})", j.search.context, j.search.batch));
  std::cout << fmt::format("budget {}{}: {} of {} candidates fit; the top {} ({}):\n", format_bytes(so.budget_bytes),
                           so.max_active_params > 0
                               ? fmt::format(", at most {} active parameters", tokens_text(so.max_active_params))
                               : "",
                           result.feasible, result.evaluated, result.candidates.size(),
                           searched ? "from search/candidates.json"
                                    : "memory-only search with uniform scores; the real search ranks by importance");
  std::cout << fmt::format("  {:>4}  {:>11}  {:>9}  {:>11}  {:>7}  {:>6}  {}{}\n", "rank", "memory", "params", counts_head,
                           "FFN", "hidden", "weights + KV + state", moe ? "  | active, experts x FFN, shared FFN" : "");
  constexpr std::size_t kShown = 12;
  for (const Candidate& c : result.candidates) {
    if (static_cast<std::size_t>(c.rank) > kShown) {
      std::cout << fmt::format("  ... {} more\n", result.candidates.size() - kShown);
      break;
    }
    const ModelConfig& k = c.config;
    std::cout << fmt::format("  {:>4}  {:>11}  {:>9}  {:>11}  {:>7}  {:>6}  {} + {} + {}{}\n", c.rank,
                             format_bytes(c.memory.total), tokens_text(static_cast<double>(c.params.total)),
                             layer_counts(k, moe), k.intermediate_size, k.hidden_size, format_bytes(c.memory.weights),
                             format_bytes(c.memory.kv_cache), format_bytes(c.memory.state()),
                             moe ? fmt::format("  | {}, {} x {}, {}", tokens_text(static_cast<double>(c.params.active)),
                                               k.n_routed_experts, k.moe_intermediate_size,
                                               k.moe_shared_expert_intermediate_size)
                                 : "");
  }

  // What each distillation rank holds, for the largest candidate shown.
  if (!result.candidates.empty()) {
    const Candidate* largest = &result.candidates.front();
    for (const Candidate& c : result.candidates)
      if (c.params.total > largest->params.total) largest = &c;
    std::cout << fmt::format("distillation memory per rank (rank {}, the largest candidate; {} process{}, {}, "
                             "seq-len {} x micro-batch {}{}; `minipuzzle distill --plan` for the table):\n  {}\n",
                             largest->rank, j.distill.processes, j.distill.processes == 1 ? "" : "es", j.dtype,
                             j.distill.seq_len, j.distill.micro_batch,
                             j.distill.activation_checkpointing ? ", activation checkpointing" : "",
                             distill_plan_line(parent, largest->config, static_cast<int>(j.distill.processes),
                                               j.distill.seq_len, j.distill.micro_batch,
                                               j.distill.activation_checkpointing, j.dtype, j.device,
                                               j.distill.shard));
  }

  // FLOPs per stage (teacher forward Ft, mean candidate forward Fs).
  const double ft = forward_flops(parent);
  double fs_sum = 0;
  for (const Candidate& c : result.candidates) fs_sum += forward_flops(c.config);
  const double fs_mean = result.candidates.empty() ? ft : fs_sum / static_cast<double>(result.candidates.size());
  const int64_t n_short = std::min<int64_t>(j.short_candidates, static_cast<int64_t>(result.candidates.size()));
  const double L = static_cast<double>(parent.num_layers());
  const double score_tokens = static_cast<double>(j.score.samples) * static_cast<double>(j.score.seq_len);
  const bool head_metrics = j.score.layer_metrics.find("kl") != std::string::npos ||
                            j.score.layer_metrics.find("loss") != std::string::npos;
  const double head_flops = 2.0 * static_cast<double>(parent.vocab_size) * static_cast<double>(parent.hidden_size);
  const double backward = j.distill.activation_checkpointing ? 4.0 : 3.0;  // x forward
  auto distill_flops = [&](const CompressJob::DistillRun& r) {
    const int64_t steps = j.steps_for(r.tokens);
    const double tokens = static_cast<double>(steps) * static_cast<double>(j.distill.global_batch * j.distill.seq_len);
    const double evals = 2.0 + (r.eval_every > 0 ? static_cast<double>(steps / r.eval_every) : 0.0);
    return tokens * (ft + backward * fs_mean) + evals * static_cast<double>(j.distill.eval_tokens) * (ft + fs_mean);
  };
  const double tflops = j.estimate_tflops > 0 ? j.estimate_tflops : default_tflops(j);
  struct Row {
    std::string stage, tokens;
    double flops;
  };
  const std::vector<Row> rows = {
      {"score", tokens_text(score_tokens), score_tokens * (ft * (1.0 + L / 2.0) + (head_metrics ? L * head_flops : 0.0))},
       {"search + rank", fmt::format("{} x {} models", tokens_text(static_cast<double>(j.rank.tokens)), result.candidates.size() + 1),
       static_cast<double>(j.rank.tokens) * (ft + fs_sum)},
      {"short distill", fmt::format("{} x {} runs", tokens_text(static_cast<double>(j.short_distill.tokens)), n_short),
       static_cast<double>(n_short) * distill_flops(j.short_distill)},
      {"long distill", tokens_text(static_cast<double>(j.long_distill.tokens)), distill_flops(j.long_distill)},
      {"compare", fmt::format("{} x 4 models", tokens_text(static_cast<double>(j.evaluate.tokens))),
       static_cast<double>(j.evaluate.tokens) * (4.0 * ft + 3.0 * fs_mean)},
  };
  std::cout << fmt::format("\nestimated compute at {} TFLOP/s sustained ({}):\n  {:<14} {:>20}  {:>14}  {:>10}\n", tflops,
                           j.estimate_tflops > 0 ? "estimate.tflops" : "a default for " + j.device + "/" + j.dtype +
                                                                           "; set estimate.tflops for your machine",
                           "stage", "tokens", "FLOP", "time");
  double total = 0;
  for (const Row& r : rows) {
    std::cout << fmt::format("  {:<14} {:>20}  {:>14.3g}  {:>10}\n", r.stage, r.tokens, r.flops,
                             human_time(r.flops / (tflops * 1e12)));
    total += r.flops;
  }
  std::cout << fmt::format("  {:<14} {:>20}  {:>14.3g}  {:>10}\n", "total", "", total,
                           human_time(total / (tflops * 1e12)));

  const JobChange change = job_change(j);
  if (change.first) std::cout << "\n";
  continue_changed_job(j, change, /*apply=*/false);
  std::cout << fmt::format("\nstages (job directory {}):\n", j.out);
  int i = 0;
  for (const Stage& st : plan_stages(j)) {
    const bool redo = change.first && st.stage >= *change.first;
    std::string line =
        fmt::format("  {:>2}. {:<22} {:<6} ", ++i, st.name, st.done && !redo ? "done" : st.done ? "rerun" : "to do");
    if (st.argv.empty()) {
      line += st.name == "pick" ? "lowest validation loss after the short distillation -> pick.json"
              : st.name == "compare" ? "teacher / pruned / distilled / export on data.validation -> compare.json"
                                     : "report.md with tables and plots";
    } else {
      std::vector<std::string> quoted;
      for (const auto& a : st.argv) quoted.push_back(quote(a));
      if (st.processes > 1) {
        line += local_processes_command(quoted, st.processes);
      } else {
        line += "minipuzzle";
        for (const auto& a : quoted) line += " " + a;
      }
    }
    std::cout << line << "\n";
  }
  return 0;
}

}  // namespace minipuzzle::cli
