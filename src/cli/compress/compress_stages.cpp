#include "compress_stages.h"

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "../commands.h"
#include "compress_compare.h"
#include "compress_report.h"
#include "local_processes.h"
#include "minipuzzle/atomic_file.h"
#include "minipuzzle/candidates_json.h"
#include "minipuzzle/distill_trainer.h"
#include "minipuzzle/errors.h"

namespace minipuzzle::cli {

namespace fs = std::filesystem;
using nlohmann::json;

CompressPaths::CompressPaths(const fs::path& o)
    : out(o),
      job_json(o / "job.json"),
      log(o / "compress.log.jsonl"),
      scores(o / "scores"),
      search_dir(o / "search"),
      candidates(o / "search" / "candidates.json"),
      pick(o / "pick.json"),
      long_run(o / "long"),
      export_dir(o / "export"),
      compare(o / "compare.json"),
      report(o / "report.md") {}

fs::path CompressPaths::short_dir(int64_t rank) const { return out / "short" / fmt::format("rank-{}", rank); }

std::vector<fs::path> CompressPaths::outputs_of(CompressStage stage) const {
  switch (stage) {
    case CompressStage::Score: return {scores};
    case CompressStage::Search: return {search_dir};
    case CompressStage::ShortDistill: return {out / "short"};
    case CompressStage::Pick: return {pick};
    case CompressStage::LongDistill: return {long_run};
    case CompressStage::Export: return {export_dir};
    case CompressStage::Compare: return {compare};
    case CompressStage::Report:  // the plots first: report.md marks the stage done
      return {out / "candidates.png", out / "short_distill.png", out / "long_distill.png", report};
  }
  return {};
}

namespace {

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// A distillation run is complete once its final model and report are written
// (the trainer writes final/ atomically, then the report).
bool run_complete(const fs::path& run) { return path_exists(run / "final" / "config.json") && path_exists(run / "report.md"); }

std::string num(double v) { return fmt::format("{}", v); }

// The flags both distillations share, then the run's own.
std::vector<std::string> distill_argv(const CompressJob& j, const CompressJob::DistillRun& r, const std::string& student,
                                      const fs::path& out) {
  const int64_t steps = j.steps_for(r.tokens);
  const int64_t save_every = r.save_every > 0 ? r.save_every : std::max<int64_t>(1, (steps + 9) / 10);
  std::vector<std::string> a = {"distill", "--teacher", j.teacher, "--student", student, "--data", j.train_data,
                                "--eval-data", j.validation_data, "--out", out.string(),
                                "--tokens", std::to_string(r.tokens),
                                "--seq-len", std::to_string(j.distill.seq_len),
                                "--micro-batch", std::to_string(j.distill.micro_batch),
                                "--global-batch", std::to_string(j.distill.global_batch),
                                "--lr", num(r.lr), "--min-lr", num(r.min_lr),
                                "--warmup", std::to_string(r.warmup_steps),
                                "--schedule", j.distill.schedule, "--loss", j.distill.loss,
                                "--temperature", num(j.distill.temperature), "--ce-weight", num(j.distill.ce_weight),
                                "--weight-decay", num(j.distill.weight_decay), "--clip-grad", num(j.distill.clip_grad),
                                "--eval-every", std::to_string(r.eval_every),
                                "--eval-tokens", std::to_string(j.distill.eval_tokens),
                                "--save-every", std::to_string(save_every),
                                "--keep-last", std::to_string(j.distill.keep_last),
                                "--seed", std::to_string(j.distill.seed),
                                "--dtype", j.dtype, "--device", j.device, "--resume"};
  if (j.distill.activation_checkpointing) a.push_back("--activation-checkpointing");
  // Only when sharded: the argv of an unsharded job (the demo's) is as before.
  if (j.distill.shard != "none") {
    a.push_back("--shard");
    a.push_back(j.distill.shard);
  }
  return a;
}

// Runs a `minipuzzle` command line in this process.
int run_command(const std::vector<std::string>& argv) {
  const std::string& cmd = argv.at(0);
  const Args args(argv.begin() + 1, argv.end());
  if (cmd == "score") return cmd_score(args);
  if (cmd == "search") return cmd_search(args);
  if (cmd == "prune") return cmd_prune(args);
  if (cmd == "distill") return cmd_distill(args);
  if (cmd == "export") return cmd_export(args);
  throw std::logic_error("compress: no stage command " + cmd);
}

// Number of candidates search kept (short_distill.candidates before it ran).
int64_t short_count(const CompressJob& j, const CompressPaths& p) {
  if (!path_exists(p.candidates)) return j.short_candidates;
  const auto n = static_cast<int64_t>(load_candidates(p.candidates).candidates.size());
  return std::min(j.short_candidates, n);
}

// The last evaluation record of a run's metrics.jsonl.
json last_eval(const fs::path& run) {
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  json last;
  while (std::getline(in, line)) {
    json rec = json::parse(line, nullptr, false);
    if (!rec.is_discarded() && rec.value("eval", false)) last = rec;
  }
  if (last.is_null()) throw InputError(fmt::format("{}: no evaluation in metrics.jsonl", run.string()));
  return last;
}

int pick_winner(const CompressJob& j, const CompressPaths& p) {
  const int64_t n = short_count(j, p);
  json runs = json::array();
  int64_t best = 0;
  double best_loss = 0;
  for (int64_t r = 1; r <= n; ++r) {
    const json e = last_eval(p.short_run(r));
    const double loss = e.at("loss").get<double>();
    json rec = {{"rank", r}, {"loss", loss}, {"accuracy", e.value("accuracy", 0.0)}, {"run", p.short_run(r).string()}};
    if (e.contains("kl")) rec["kl"] = e["kl"], rec["agreement"] = e["agreement"];
    runs.push_back(rec);
    if (best == 0 || loss < best_loss) best = r, best_loss = loss;  // ties keep the better-ranked one
  }
  json out = {{"winner_rank", best}, {"by", "validation loss after the short distillation"}, {"candidates", runs}};
  write_file_atomic(p.pick, out.dump(2) + "\n");
  std::cout << fmt::format("picked candidate rank {} (validation loss {:.4f} after {} short-distillation tokens)\n",
                           best, best_loss, j.short_distill.tokens);
  return 0;
}

void log_event(const CompressPaths& p, const std::string& stage, const std::string& status, double seconds) {
  std::ofstream log(p.log, std::ios::app);
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  log << json{{"stage", stage}, {"status", status}, {"seconds", seconds}, {"unix_time", now.count()}}.dump() << "\n";
}

}  // namespace

int64_t picked_rank(const CompressPaths& p) {
  if (!path_exists(p.pick)) return 0;
  const json j = json::parse(read_file(p.pick), nullptr, false);
  if (j.is_discarded() || !j.contains("winner_rank") || !j["winner_rank"].is_number_integer())
    throw InputError(p.pick.string() + ": unreadable; delete it to pick again");
  return j["winner_rank"].get<int64_t>();
}

std::vector<Stage> plan_stages(const CompressJob& j) {
  const CompressPaths p(j.out);
  std::vector<Stage> s;
  const std::string cands = p.candidates.string();

  std::vector<std::string> score = {
      "score", j.teacher, "--data", j.train_data, "--out", p.scores.string(),
      "--samples", std::to_string(j.score.samples), "--seq-len", std::to_string(j.score.seq_len),
      "--batch", std::to_string(j.score.batch), "--seed", std::to_string(j.score.seed),
      "--aggregation", j.score.aggregation, "--layer-metrics", j.score.layer_metrics,
      "--dtype", j.dtype, "--device", j.device};
  if (!j.max_device_memory.empty()) {
    score.push_back("--max-device-memory");
    score.push_back(j.max_device_memory);
  }
  s.push_back({CompressStage::Score, "score", score, path_exists(p.scores / "importance.json")});

  std::vector<std::string> search = {
      "search", j.teacher, "--scores", p.scores.string(), "--budget", j.search.budget,
      "--precision", j.search.precision, "--kv-precision", j.search.kv_precision,
      "--state-precision", j.search.state_precision, "--context", std::to_string(j.search.context),
      "--batch", std::to_string(j.search.batch), "--workspace", j.search.workspace, "--space", j.search.space,
      "--max-depth-reduction", num(j.search.max_depth_reduction),
      "--max-width-reduction", num(j.search.max_width_reduction),
      "--min-budget-use", num(j.search.min_budget_use), "--top-k", std::to_string(j.search.top_k),
      "--rank-data", j.validation_data, "--rank-tokens", std::to_string(j.rank.tokens),
      "--rank-seq-len", std::to_string(j.rank.seq_len), "--rank-batch", std::to_string(j.rank.batch),
      "--rank-by", j.rank.by, "--dtype", j.dtype, "--device", j.device, "--out", cands};
  for (const auto& [axis, value] : j.search.axes) search.insert(search.end(), {"--axis", axis + "=" + value});
  if (j.search.maximal_only) search.push_back("--maximal-only");
  // Only when set: a job without the limit runs the command line it always ran.
  if (j.search.max_active_params > 0)
    search.insert(search.end(), {"--max-active-params", std::to_string(j.search.max_active_params)});
  s.push_back({CompressStage::Search, "search", search, path_exists(p.candidates)});
  s.back().run = [p, argv = search] {
    fs::create_directories(p.search_dir);
    return run_command(argv);
  };

  const int64_t n = short_count(j, p);
  for (int64_t r = 1; r <= n; ++r) {
    s.push_back({CompressStage::ShortDistill, fmt::format("prune rank-{}", r),
                 {"prune", j.teacher, "--scores", p.scores.string(), "--candidate", fmt::format("{}#{}", cands, r),
                  "--out", p.short_student(r).string()},
                 path_exists(p.short_student(r) / "config.json")});
    s.back().run = [p, r, argv = s.back().argv] {
      fs::create_directories(p.short_dir(r));
      return run_command(argv);
    };
    s.push_back({CompressStage::ShortDistill, fmt::format("short distill rank-{}", r),
                 distill_argv(j, j.short_distill, p.short_student(r).string(), p.short_run(r)),
                 run_complete(p.short_run(r))});
  }
  s.push_back({CompressStage::Pick, "pick", {}, path_exists(p.pick)});
  s.back().run = [j, p] { return pick_winner(j, p); };

  const int64_t w = picked_rank(p);
  const std::string winner = w > 0 ? (p.short_run(w) / "final").string() : (p.short_dir(0).parent_path() / "rank-?" / "distill" / "final").string();
  s.push_back({CompressStage::LongDistill, "long distill", distill_argv(j, j.long_distill, winner, p.long_run), run_complete(p.long_run), w == 0});
  s.push_back({CompressStage::Export, "export",
               {"export", (p.long_run / "final").string(), "--out", p.export_dir.string(), "--dtype", j.export_.dtype,
                "--max-shard-size", j.export_.max_shard_size},
               path_exists(p.export_dir / "config.json")});
  s.push_back({CompressStage::Compare, "compare", {}, path_exists(p.compare)});
  s.back().run = [j, p] { return compare_stage(j, p); };
  s.push_back({CompressStage::Report, "report", {}, path_exists(p.report)});
  s.back().run = [j, p] { return report_stage(j, p); };

  for (Stage& st : s) {
    if (st.argv.empty() || st.argv[0] != "distill" || j.distill.processes < 2) continue;
    st.processes = static_cast<int>(j.distill.processes);
    st.run = [argv = st.argv, n = st.processes] { return run_local_processes(argv, n); };
  }
  for (Stage& st : s)
    if (!st.run) st.run = [argv = st.argv] { return run_command(argv); };
  return s;
}

int run_compress(const CompressJob& job) {
  const CompressPaths p(job.out);
  for (;;) {
    // Re-planned after each stage: later stages read earlier outputs.
    const std::vector<Stage> stages = plan_stages(job);
    const Stage* next = nullptr;
    for (const Stage& st : stages)
      if (!st.done) {
        next = &st;
        break;
      }
    if (!next) break;
    std::cout << fmt::format("\n== compress: {}\n", next->name) << std::flush;
    log_event(p, next->name, "start", 0);
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = next->run();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The distill command installs SIGINT/SIGTERM handlers that only set a
    // flag; stages after it must stop on a signal again.
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (rc == 130 || distill_stop_flag().load()) {
      log_event(p, next->name, "interrupted", seconds);
      std::cerr << fmt::format("minipuzzle compress: interrupted during '{}'; rerun the same command to resume\n",
                               next->name);
      return 130;
    }
    if (rc != 0) {
      log_event(p, next->name, "failed", seconds);
      return rc;
    }
    log_event(p, next->name, "done", seconds);
    // A stage that returns 0 must leave its completion marker.
    for (const Stage& st : plan_stages(job))
      if (st.name == next->name && !st.done)
        throw std::runtime_error(fmt::format("compress: stage '{}' finished without its outputs", next->name));
  }
  print_before_after(job, p);
  return 0;
}

}  // namespace minipuzzle::cli
