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

  plot::LineChart loss;
  loss.title = "training loss per step";
  loss.x_label = "step";
  loss.y_label = "nats/token";
  loss.series = {{"loss", {}, {}}, {"kd", {}, {}}};
  for (const auto& s : steps) {
    loss.series[0].x.push_back(s["step"].get<double>());
    loss.series[0].y.push_back(s["loss"].get<double>());
    loss.series[1].x.push_back(s["step"].get<double>());
    loss.series[1].y.push_back(s["kd"].get<double>());
  }
  plot::LineChart ev;
  ev.title = "evaluation (held-out tokens)";
  ev.x_label = "step";
  ev.y_label = "nats/token";
  ev.series = {{"student LM loss", {}, {}}, {"KL to teacher", {}, {}}};
  for (const auto& e : evals) {
    ev.series[0].x.push_back(e["step"].get<double>());
    ev.series[0].y.push_back(e["loss"].get<double>());
    if (e.contains("kl")) {  // absent when trained from a teacher cache without a teacher model
      ev.series[1].x.push_back(e["step"].get<double>());
      ev.series[1].y.push_back(e["kl"].get<double>());
    }
  }
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
