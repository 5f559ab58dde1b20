#include "minipuzzle/distill_report.h"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/json_read_back.h"
#include "minipuzzle/plot_png.h"

namespace minipuzzle {

void write_distill_report(const std::filesystem::path& run_dir) {
  using nlohmann::json;
  std::vector<json> steps, evals;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = parse_json_read_back(line);
    if (j.is_discarded()) continue;
    (j.value("eval", false) ? evals : steps).push_back(j);
  }
  json run = parse_json_read_back(read_file(run_dir / "run.json"));

  // One panel per metric: a KD loss of 0.02 and a learning rate of 1e-4
  // share no axis; a log axis where a curve spans decades.
  auto panel = [](const std::string& title, const std::vector<json>& recs, const std::vector<std::string>& keys,
                  const std::vector<std::string>& names) {
    plot::LineChart p;
    p.title = title;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      plot::Series s{names[k], {}, {}};
      for (const auto& r : recs)
        if (r.contains(keys[k]) && r[keys[k]].is_number())
          s.x.push_back(r["step"].get<double>()), s.y.push_back(r[keys[k]].get<double>());
      if (!s.x.empty()) p.series.push_back(std::move(s));
    }
    p.log_y = plot::spans_decades(p.series);
    return p;
  };
  plot::Figure loss;
  loss.title = "training, per step";
  loss.x_label = "step";
  // The KD term is its own curve only when the loss holds more (--ce-weight > 0).
  bool kd_differs = false;
  for (const auto& r : steps) kd_differs |= r.contains("kd") && r.contains("loss") && r["kd"] != r["loss"];
  loss.panels = {kd_differs ? panel("training loss (nats/token)", steps, {"loss", "kd"}, {"loss", "KD term"})
                            : panel("training loss (nats/token)", steps, {"loss"}, {"loss (KD)"}),
                 panel("learning rate", steps, {"lr"}, {"lr"}),
                 panel("gradient norm (before clipping)", steps, {"grad_norm"}, {"grad norm"})};
  plot::Figure ev;
  ev.title = "evaluation on held-out tokens";
  ev.x_label = "step";
  ev.panels = {panel("student LM loss (nats/token)", evals, {"loss"}, {"LM loss"})};
  // Absent when trained from a teacher cache without a teacher model.
  plot::LineChart kl = panel("KL to the teacher (nats/token)", evals, {"kl"}, {"KL"});
  if (!kl.series.empty()) ev.panels.push_back(std::move(kl));
  if (!steps.empty()) plot::write_png(run_dir / "loss.png", loss);
  if (!evals.empty()) plot::write_png(run_dir / "eval.png", ev);

  std::ostringstream md;
  md << "# Distillation report\n\n";
  if (run.is_object()) {
    md << "| option | value |\n|---|---|\n";
    for (const auto& [k, v] : run.items()) md << "| " << k << " | " << (v.is_string() ? v.get<std::string>() : v.dump()) << " |\n";
    md << "\n";
  }
  if (!evals.empty()) {
    md << "## Evaluation\n\n| step | LM loss | KL to teacher | accuracy | agreement with teacher | tokens |\n"
          "|---|---|---|---|---|---|\n";
    for (const auto& e : evals)
      md << fmt::format("| {} | {:.4f} | {} | {:.4f} | {} | {} |\n", e["step"].get<int64_t>(),
                        e["loss"].get<double>(), e.contains("kl") ? fmt::format("{:.4f}", e["kl"].get<double>()) : "-",
                        e["accuracy"].get<double>(),
                        e.contains("agreement") ? fmt::format("{:.4f}", e["agreement"].get<double>()) : "-",
                        e["tokens"].get<uint64_t>());
    md << "\n![evaluation](eval.png)\n\n";
  }
  if (!steps.empty()) {
    const json& last = steps.back();
    md << fmt::format("## Training\n\n{} steps, {} tokens in {:.1f} s ({:.0f} tokens/s); last loss {:.4f}.\n\n",
                      last["step"].get<int64_t>(), last["tokens"].get<uint64_t>(), last["seconds"].get<double>(),
                      last["tokens_per_second"].get<double>(), last["loss"].get<double>());
    md << "![training loss](loss.png)\n";
  }
  write_file_atomic(run_dir / "report.md", md.str());
}

}  // namespace minipuzzle
