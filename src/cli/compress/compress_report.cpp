#include "compress_report.h"

#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/candidates_json.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/plot_png.h"

namespace minipuzzle::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<json> read_jsonl(const fs::path& file) {
  std::vector<json> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object()) out.push_back(std::move(j));
  }
  return out;
}

std::string count_text(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  return fmt::format("{:.1f}K", n / 1e3);
}

// "M/*/-" counts of a pattern; "M/*/-/E" for a job on an MoE teacher.
std::string layers_text(const std::string& pattern, bool moe) {
  int m = 0, a = 0, f = 0, e = 0;
  for (char c : pattern) m += c == 'M', a += c == '*', f += c == '-', e += c == 'E';
  return moe ? fmt::format("{}/{}/{}/{}", m, a, f, e) : fmt::format("{}/{}/{}", m, a, f);
}

// An MoE teacher: the first row of compare.json has MoE layers. Those tables
// gain the E count and the parameters a token uses (active).
bool moe_job(const json& cmp) {
  return cmp.at("models").at(0).at("pattern").get<std::string>().find('E') != std::string::npos;
}

// Rows of the before/after table: model, layers, params, [active,] memory,
// loss, acc, agreement, KL (text cells).
std::vector<std::vector<std::string>> before_after_rows(const json& cmp) {
  std::vector<std::vector<std::string>> rows;
  const bool moe = moe_job(cmp);
  const json& models = cmp.at("models");
  const double teacher_loss = models.at(0).at("loss").get<double>();
  for (const json& m : models) {
    const double loss = m.at("loss").get<double>();
    std::vector<std::string> row = {m.at("name").get<std::string>(), layers_text(m.at("pattern").get<std::string>(), moe),
                                    count_text(m.at("params").get<double>())};
    if (moe) row.push_back(count_text(m.at("active_params").get<double>()));
    // The weight format beside the memory: the export row may differ from the
    // search's precision (a compare.json from before this key has none).
    const std::string weights = m.value("weights", std::string());
    for (std::string cell : {format_bytes(m.at("memory_bytes").get<double>()) + (weights.empty() ? "" : " (" + weights + ")"),
                             fmt::format("{:.4f} ({:+.1f}%)", loss, 100.0 * (loss / teacher_loss - 1.0)),
                             fmt::format("{:.4f}", m.at("accuracy").get<double>()),
                             fmt::format("{:.4f}", m.at("agreement").get<double>()),
                             fmt::format("{:.4f}", m.at("kl").get<double>())})
      row.push_back(std::move(cell));
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<std::string> before_after_head(const json& cmp) {
  if (moe_job(cmp))
    return {"model", "layers M/*/-/E", "params", "active params", "memory", "val loss", "accuracy", "agreement",
            "KL to teacher"};
  return {"model", "layers M/*/-", "params", "memory", "val loss", "accuracy", "agreement", "KL to teacher"};
}

std::string md_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::string s = "|";
  for (const auto& h : head) s += " " + h + " |";
  s += "\n|";
  for (std::size_t i = 0; i < head.size(); ++i) s += "---|";
  s += "\n";
  for (const auto& r : rows) {
    s += "|";
    for (const auto& c : r) s += " " + c + " |";
    s += "\n";
  }
  return s;
}

std::string deployment_text(const CompressJob& j) {
  return fmt::format("weights {}, KV cache {}, Mamba state {}, context {}, batch {}", j.search.precision,
                     j.search.kv_precision, j.search.state_precision, j.search.context, j.search.batch);
}

// One metric of a run per step: its training records or its evaluations.
plot::Series run_series(const fs::path& run, const std::string& name, bool eval, const char* key) {
  plot::Series s{name, {}, {}};
  for (const json& r : read_jsonl(run / "metrics.jsonl")) {
    if (!r.contains("step") || !r.contains(key) || !r[key].is_number() || r.value("eval", false) != eval) continue;
    s.x.push_back(r["step"].get<double>());
    s.y.push_back(r[key].get<double>());
  }
  return s;
}

// A panel of one metric; a log axis where its curves span decades.
plot::LineChart metric_panel(const std::string& title, std::vector<plot::Series> series) {
  plot::LineChart p;
  p.title = title;
  p.series = std::move(series);
  p.log_y = plot::spans_decades(p.series);
  return p;
}

}  // namespace

void print_before_after(const CompressJob& j, const CompressPaths& p) {
  const json cmp = json::parse(read_file(p.compare), nullptr, false);
  if (cmp.is_discarded()) throw std::runtime_error(p.compare.string() + ": unreadable");
  const auto rows = before_after_rows(cmp);
  const auto head = before_after_head(cmp);
  std::vector<std::size_t> width(head.size());
  for (std::size_t c = 0; c < width.size(); ++c) {
    width[c] = head[c].size();
    for (const auto& r : rows) width[c] = std::max(width[c], r[c].size());
  }
  std::cout << fmt::format("\nbefore / after on {} held-out tokens of {} (memory: {})\n",
                           cmp.at("tokens").get<uint64_t>(), cmp.at("data").get<std::string>(), deployment_text(j));
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (std::size_t c = 0; c < cells.size(); ++c)
      s += c == 0 ? fmt::format("{:<{}}", cells[c], width[c]) : fmt::format("  {:>{}}", cells[c], width[c]);
    std::cout << s << "\n";
  };
  line(head);
  for (const auto& r : rows) line(r);
  std::cout << fmt::format("\nshippable model: {}\nreport: {}\n", p.export_dir.string(), p.report.string());
}

int report_stage(const CompressJob& j, const CompressPaths& p) {
  std::ostringstream md;
  const json cmp = json::parse(read_file(p.compare), nullptr, false);
  const SearchResult cands = load_candidates(p.candidates);
  const json pick = json::parse(read_file(p.pick), nullptr, false);
  const int64_t winner = picked_rank(p);

  md << "# Compression report\n\n";
  md << fmt::format("Teacher `{}`, budget **{}** per inference instance ({}). Shippable model: `export/` ({}).\n\n",
                    j.teacher, j.search.budget, deployment_text(j), j.export_.dtype);
  md << fmt::format("## Before / after\n\n{} held-out tokens of `{}` (windows of {}); loss in nats/token, "
                    "the change against the teacher in brackets.\n\n",
                    cmp.at("tokens").get<uint64_t>(), cmp.at("data").get<std::string>(), cmp.at("seq_len").get<int64_t>());
  md << md_table(before_after_head(cmp), before_after_rows(cmp)) << "\n";
  const bool moe = moe_job(cmp);
  if (moe) {
    // Exact counts: the table's are rounded.
    md << "Active parameters per token (each E layer runs `num_experts_per_tok` of its routed experts; "
          "embeddings and LM head included):\n\n";
    for (const json& m : cmp.at("models"))
      md << fmt::format("- {}: {} active of {} parameters\n", m.at("name").get<std::string>(),
                        m.at("active_params").get<int64_t>(), m.at("params").get<int64_t>());
    md << "\n";
  }

  // Stage times: the last "done" record of each stage.
  std::map<std::string, double> seconds;
  std::vector<std::string> order;
  for (const json& r : read_jsonl(p.log))
    if (r.value("status", "") == "done") {
      const std::string s = r.value("stage", "");
      if (!seconds.count(s)) order.push_back(s);
      seconds[s] = r.value("seconds", 0.0);
    }
  std::vector<std::vector<std::string>> stage_rows;
  double total = 0;
  for (const auto& s : order) stage_rows.push_back({s, fmt::format("{:.1f}", seconds[s])}), total += seconds[s];
  stage_rows.push_back({"**total**", fmt::format("{:.1f}", total)});
  md << "## Stages\n\nWall time of each stage's last completed run (a resumed stage counts its last part only).\n\n"
     << md_table({"stage", "seconds"}, stage_rows) << "\n";

  md << "## Layer importance\n\nDrop-one metrics on the calibration windows (details: [scores/report.md](scores/report.md)).\n\n"
     << "![layer importance](scores/layer_importance.png)\n\n";

  md << fmt::format("## Candidates\n\n{} architectures searched, {} fit the budget{}; the top {} ranked on {} "
                    "held-out tokens by {}.\n\n",
                    cands.evaluated, cands.feasible,
                    cands.max_active_params > 0
                        ? fmt::format(" and at most {:.0f} active parameters per token", cands.max_active_params)
                        : "",
                    cands.candidates.size(), j.rank.tokens, j.rank.by);
  std::map<int64_t, json> short_by_rank;
  for (const json& c : pick.at("candidates")) short_by_rank[c.at("rank").get<int64_t>()] = c;
  std::vector<std::vector<std::string>> crow;
  plot::LineChart scatter;
  scatter.title = "candidates: memory vs proxy score";
  scatter.x_label = "memory (MiB)";
  scatter.y_label = "proxy score";
  scatter.series = {{"ranked only", {}, {}, true}, {"short-distilled", {}, {}, true}, {"winner", {}, {}, true}};
  for (const Candidate& c : cands.candidates) {
    const ModelConfig& k = c.config;
    auto measured = [&](const char* key) {
      return c.measured.count(key) ? fmt::format("{:.4f}", c.measured.at(key)) : std::string("-");
    };
    const bool distilled = short_by_rank.count(c.rank) > 0;
    std::vector<std::string> row = {std::to_string(c.rank), format_bytes(c.memory.total),
                                    count_text(static_cast<double>(c.params.total)), layers_text(k.pattern, moe),
                                    std::to_string(k.intermediate_size), std::to_string(k.hidden_size),
                                    fmt::format("{}x{}", k.mamba_num_heads, k.mamba_head_dim),
                                    std::to_string(k.num_attention_heads)};
    if (moe)
      row.insert(row.end(), {count_text(static_cast<double>(c.params.active)),
                             fmt::format("{} x {}", k.n_routed_experts, k.moe_intermediate_size),
                             std::to_string(k.moe_shared_expert_intermediate_size)});
    row.insert(row.end(), {fmt::format("{:.4f}", c.proxy_score), measured("agreement"), measured("loss"),
                           distilled ? fmt::format("{:.4f}", short_by_rank[c.rank].at("loss").get<double>()) : "-"});
    crow.push_back(std::move(row));
    const std::size_t series = c.rank == winner ? 2 : distilled ? 1 : 0;
    scatter.series[series].x.push_back(c.memory.total / (1024.0 * 1024.0));
    scatter.series[series].y.push_back(c.proxy_score);
  }
  std::vector<std::string> chead = {"rank", "memory", "params", moe ? "layers M/*/-/E" : "layers M/*/-", "FFN",
                                    "hidden", "Mamba heads", "attn heads"};
  if (moe) chead.insert(chead.end(), {"active params", "experts x expert FFN", "shared FFN"});
  chead.insert(chead.end(), {"proxy", "agreement", "loss (pruned)", "loss after short distill"});
  md << md_table(chead, crow)
     << "\n![candidates](candidates.png)\n\n";
  plot::write_png(p.out / "candidates.png", scatter);

  std::vector<plot::Series> short_train, short_eval;
  for (const auto& [rank, rec] : short_by_rank) {
    short_train.push_back(run_series(p.short_run(rank), fmt::format("rank {}", rank), false, "loss"));
    short_eval.push_back(run_series(p.short_run(rank), fmt::format("rank {}", rank), true, "loss"));
  }
  plot::Figure shorts;
  shorts.title = "short distillation of each candidate";
  shorts.x_label = "step";
  shorts.panels = {metric_panel("training loss (nats/token)", std::move(short_train)),
                   metric_panel("held-out LM loss (nats/token)", std::move(short_eval))};
  plot::write_png(p.out / "short_distill.png", shorts);
  md << fmt::format("## Short distillation\n\nThe top {} candidates, {} tokens each; the winner is the lowest "
                    "validation loss: **rank {}**.\n\n![short distillation](short_distill.png)\n\n",
                    short_by_rank.size(), j.short_distill.tokens, winner);
  for (const auto& [rank, rec] : short_by_rank)
    md << fmt::format("- rank {}: validation loss {:.4f}, accuracy {:.4f} ([report](short/rank-{}/distill/report.md))\n",
                      rank, rec.at("loss").get<double>(), rec.at("accuracy").get<double>(), rank);

  plot::Figure longc;
  longc.title = "long distillation of the winner";
  longc.x_label = "step";
  longc.panels = {metric_panel("training loss (nats/token)", {run_series(p.long_run, "train", false, "loss")}),
                  metric_panel("held-out LM loss (nats/token)", {run_series(p.long_run, "held-out", true, "loss")}),
                  metric_panel("KL to the teacher on held-out tokens (nats/token)",
                               {run_series(p.long_run, "held-out", true, "kl")}),
                  metric_panel("learning rate", {run_series(p.long_run, "lr", false, "lr")})};
  plot::write_png(p.out / "long_distill.png", longc);
  md << fmt::format("\n## Long distillation\n\nThe winner, {} more tokens ([report](long/report.md)).\n\n"
                    "![long distillation](long_distill.png)\n\n",
                    j.long_distill.tokens);
  md << "## Reproduce\n\nEvery stage is a `minipuzzle` command; `minipuzzle compress JOB --dry-run` prints them. "
        "The job's settings are in [job.json](job.json).\n";
  write_file_atomic(p.report, md.str());
  return 0;
}

}  // namespace minipuzzle::cli
