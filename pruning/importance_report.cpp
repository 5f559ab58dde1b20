#include "minipuzzle/importance_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/plot_png.h"

namespace minipuzzle {

namespace {

int type_category(char c) { return c == 'M' ? 0 : c == '*' ? 1 : 2; }

// min / median / max of the non-empty per-layer vectors of one axis.
std::string width_summary(const char* axis, const std::vector<std::vector<float>>& per_layer) {
  std::vector<float> all;
  int64_t layers = 0;
  for (const auto& v : per_layer)
    if (!v.empty()) {
      all.insert(all.end(), v.begin(), v.end());
      ++layers;
    }
  if (all.empty()) return "";
  std::sort(all.begin(), all.end());
  const auto zeros = std::count(all.begin(), all.end(), 0.0f);
  return fmt::format("| {} | {} | {} | {:.4g} | {:.4g} | {:.4g} | {} |\n", axis, layers, all.size(), all.front(),
                     all[all.size() / 2], all.back(), zeros);
}

}  // namespace

void write_importance_report(const ImportanceScores& s, const ModelConfig& c, const std::filesystem::path& dir) {
  const std::string primary = s.primary_layer_metric();
  const auto prov = nlohmann::json::parse(s.provenance_json, nullptr, false);
  std::ostringstream md;
  md << "# Importance scores\n\n";
  if (prov.is_object()) {
    md << "| measured | |\n|---|---|\n";
    for (const auto& [k, v] : prov.items()) md << "| " << k << " | " << (v.is_string() ? v.get<std::string>() : v.dump()) << " |\n";
    md << "\n";
  }
  md << fmt::format("Model: {} layers (pattern `{}`), config hash `{}`, weights hash `{}`.\n\n", c.num_layers(),
                    c.pattern, s.config_hash, s.weights_hash);

  if (!primary.empty()) {
    const auto& v = s.layer.at(primary);
    plot::BarChart chart;
    chart.title = fmt::format("drop-one layer importance ({})", primary);
    chart.x_label = "layer";
    chart.y_label = primary;
    chart.values.assign(v.begin(), v.end());
    chart.categories = {"mamba", "attention", "mlp"};
    for (int64_t i = 0; i < c.num_layers(); ++i) chart.category.push_back(type_category(c.pattern[i]));
    chart.width = static_cast<int>(std::clamp<int64_t>(120 + 14 * c.num_layers(), 640, 2400));
    plot::write_png(dir / "layer_importance.png", chart);
    md << "![layer importance](layer_importance.png)\n\n";
  }

  // Metrics in their documented order, not the map's alphabetical one.
  std::vector<std::pair<std::string, const std::vector<float>*>> metrics;
  for (const auto& m : layer_metric_names())
    if (s.layer.count(m)) metrics.emplace_back(m, &s.layer.at(m));
  md << "## Layers\n\nHigher = more harm when the layer is dropped. Rank 1 = most important "
        "(overall / within its type).\n\n| layer | type |";
  for (const auto& [metric, v] : metrics) md << " " << metric << " | rank | rank in type |";
  md << "\n|---|---|";
  for (std::size_t k = 0; k < s.layer.size(); ++k) md << "---|---|---|";
  md << "\n";
  const LayerRanks ranks = layer_ranks(s, c);
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    md << "| " << i << " | " << layer_type_name(c.layer_type(i)) << " |";
    for (const auto& [metric, v] : metrics)
      md << fmt::format(" {:.4g} | {} | {} |", (*v)[i], ranks.overall.at(metric)[i], ranks.within_type.at(metric)[i]);
    md << "\n";
  }

  md << "\n## Width axes\n\n| axis | layers | values | min | median | max | zeros |\n|---|---|---|---|---|---|---|\n";
  md << width_summary("hidden (embedding channels)", {s.hidden});
  md << width_summary("ffn neurons", s.ffn);
  md << width_summary("attention heads", s.attention_heads);
  md << width_summary("mamba channels", s.mamba_channels);
  md << width_summary("mamba heads", s.mamba_heads);
  md << width_summary("mamba head channels", s.mamba_head_channels);
  md << "\nThe vectors are in importance.safetensors (names in README, \"Scores files\").\n";
  write_file_atomic(dir / "report.md", md.str());
}

}  // namespace minipuzzle
