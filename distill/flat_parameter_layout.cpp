#include "minipuzzle/flat_parameter_layout.h"

#include <fmt/format.h>

#include <algorithm>

namespace minipuzzle {

FlatParameterLayout FlatParameterLayout::of(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                            int world_size) {
  FlatParameterLayout l;
  l.world_size = std::max(1, world_size);
  for (const auto& [name, p] : named) {
    l.entries.push_back({name, l.total, p.numel()});
    l.total += p.numel();
  }
  l.shard = (l.total + l.world_size - 1) / l.world_size;
  return l;
}

std::vector<FlatParameterLayout::Piece> FlatParameterLayout::pieces(int64_t lo, int64_t hi) const {
  std::vector<Piece> out;
  hi = std::min(hi, total);
  if (lo >= hi) return out;
  // The first entry that ends after lo.
  auto it = std::upper_bound(entries.begin(), entries.end(), lo,
                             [](int64_t v, const Entry& e) { return v < e.offset + e.numel; });
  for (; it != entries.end() && it->offset < hi; ++it) {
    const int64_t a = std::max(lo, it->offset), b = std::min(hi, it->offset + it->numel);
    if (a < b) out.push_back({static_cast<std::size_t>(it - entries.begin()), a - it->offset, b - a, a});
  }
  return out;
}

nlohmann::json FlatParameterLayout::to_json() const {
  nlohmann::json params = nlohmann::json::array();
  for (const auto& e : entries) params.push_back({e.name, e.numel});
  return {{"world_size", world_size}, {"total", total}, {"shard", shard}, {"parameters", params}};
}

std::string FlatParameterLayout::difference(const nlohmann::json& j) const {
  if (!j.is_object() || !j.contains("parameters") || !j["parameters"].is_array()) return "no layout";
  const auto& p = j["parameters"];
  if (p.size() != entries.size())
    return fmt::format("{} parameters (this model: {})", p.size(), entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (!p[i].is_array() || p[i].size() != 2 || !p[i][0].is_string() || !p[i][1].is_number_integer() ||
        p[i][0].get<std::string>() != entries[i].name || p[i][1].get<int64_t>() != entries[i].numel)
      return fmt::format("parameter {} is {} (this model: {} of {} elements)", i, p[i].dump(), entries[i].name,
                         entries[i].numel);
  }
  if (j.value("total", int64_t{-1}) != total) return "total length";
  const int w = j.value("world_size", 0);
  if (w < 1 || j.value("shard", int64_t{-1}) != (total + w - 1) / w) return "world size or shard length";
  return "";
}

}  // namespace minipuzzle
