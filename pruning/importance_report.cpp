#include "minipuzzle/importance_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/plot_png.h"

namespace minipuzzle {

namespace {

int type_category(char c) { return c == 'M' ? 0 : c == '*' ? 1 : c == 'E' ? 3 : 2; }

// Entropy of a layer's router load (the experts' shares of the routed
// slots), divided by log(E): 1 = every expert equally loaded, 0 = one expert
// takes every slot.
double load_entropy(const std::vector<float>& frequency) {
  double total = 0, h = 0;
  for (float f : frequency) total += std::max(0.0f, f);
  if (total <= 0 || frequency.size() < 2) return 0;
  for (float f : frequency)
    if (f > 0) h -= (f / total) * std::log(f / total);
  return h / std::log(static_cast<double>(frequency.size()));
}

// The router section: per E layer its load statistics, and a chart of every
// expert's load, layer after layer (moe_router_load.png).
void moe_section(std::ostringstream& md, const ImportanceScores& s, const ModelConfig& c,
                 const std::filesystem::path& dir) {
  if (!c.has_moe() || s.moe_expert_frequency.empty()) return;
  md << "\n## MoE routers\n\nLoad = share of tokens routed to an expert (sums to " << c.num_experts_per_tok
     << " per layer, the experts chosen per token); entropy = entropy of the load over the experts / log(experts) "
        "(1 = balanced). Expert importance = mean over its routed tokens of || routing weight x expert output "
        "||_2.\n\n| layer | experts | load entropy | max load | min load | never routed | importance min | "
        "importance max |\n|---|---|---|---|---|---|---|---|\n";
  plot::BarChart chart;
  chart.title = "router load per expert (E layers in order)";
  chart.x_label = "layer:expert";
  chart.y_label = "share of tokens";
  int64_t moe_layer = 0;
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    const auto& f = s.moe_expert_frequency[static_cast<size_t>(i)];
    if (f.empty()) continue;
    const auto& imp = s.moe_experts[static_cast<size_t>(i)];
    const auto [lo, hi] = std::minmax_element(f.begin(), f.end());
    const auto never = std::count(f.begin(), f.end(), 0.0f);
    const auto [ilo, ihi] = std::minmax_element(imp.begin(), imp.end());
    md << fmt::format("| {} | {} | {:.4f} | {:.4g} | {:.4g} | {} | {:.4g} | {:.4g} |\n", i, f.size(), load_entropy(f),
                      *hi, *lo, never, *ilo, *ihi);
    chart.categories.push_back(fmt::format("layer {}", i));
    for (std::size_t e = 0; e < f.size(); ++e) {
      chart.values.push_back(f[e]);
      chart.labels.push_back(e == 0 ? fmt::format("{}:0", i) : "");
      chart.category.push_back(static_cast<int>(moe_layer));
    }
    ++moe_layer;
  }
  if (moe_layer > 10) chart.categories.clear();  // colours alternate by layer; a legend would not fit
  chart.width = static_cast<int>(std::clamp<int64_t>(120 + 4 * static_cast<int64_t>(chart.values.size()), 640, 8192));
  plot::write_png(dir / "moe_router_load.png", chart);
  md << "\n![router load](moe_router_load.png)\n";
}

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
    if (c.has_moe()) chart.categories.push_back("moe");
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
  md << width_summary("moe routed experts", s.moe_experts);
  md << width_summary("moe expert neurons", s.moe_expert_neurons);
  md << width_summary("moe shared-expert neurons", s.moe_shared_neurons);
  moe_section(md, s, c, dir);
  md << "\nThe vectors are in importance.safetensors (names in README, \"Scores files\").\n";
  write_file_atomic(dir / "report.md", md.str());
}

}  // namespace minipuzzle
