#include "minipuzzle/candidates_json.h"

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/memory_report.h"

namespace minipuzzle {
using nlohmann::json;

namespace {

constexpr const char* kFormat = "minipuzzle-candidates";
constexpr int kVersion = 1;

const json& field(const json& j, const char* key, const std::string& source) {
  if (!j.is_object()) throw InputError(source + ": expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) throw InputError(source + ": missing key \"" + key + "\"");
  return *it;
}

double number(const json& j, const char* key, const std::string& source) {
  const json& v = field(j, key, source);
  if (!v.is_number()) throw InputError(source + ": key \"" + key + "\" must be a number");
  return v.get<double>();
}

int64_t integer(const json& j, const char* key, const std::string& source) {
  const json& v = field(j, key, source);
  if (!v.is_number_integer()) throw InputError(source + ": key \"" + key + "\" must be an integer");
  return v.get<int64_t>();
}

std::vector<int64_t> indices(const json& j, const char* key, const std::string& source, int64_t parent_layers) {
  const json& v = field(j, key, source);
  if (!v.is_array()) throw InputError(source + ": key \"" + key + "\" must be an array of layer indices");
  std::vector<int64_t> out;
  for (const json& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= parent_layers ||
        (!out.empty() && x.get<int64_t>() <= out.back()))
      throw InputError(source + ": key \"" + key + "\" must hold ascending layer indices below " +
                       std::to_string(parent_layers));
    out.push_back(x.get<int64_t>());
  }
  return out;
}

json candidate_to_json(const Candidate& c) {
  json j = {{"rank", c.rank},
          {"proxy_score", c.proxy_score},
          {"layer_importance_kept", c.layer_importance_kept},
          {"width_factors",
           {{"mamba", c.width_factor_mamba}, {"attention", c.width_factor_attention}, {"mlp", c.width_factor_mlp}}},
          {"why", c.why},
          {"config", c.config.to_json()},
          {"kept_layers", c.kept_layers},
          {"dropped_layers", c.dropped_layers},
          {"params", params_to_json(c.params)},
          {"memory", memory_to_json(c.memory)}};
  if (!c.measured.empty()) j["measured"] = c.measured;
  if (c.config.has_moe()) j["width_factors"]["moe"] = c.width_factor_moe;
  return j;
}

Candidate candidate_from_json(const json& j, const std::string& source) {
  Candidate c;
  c.rank = integer(j, "rank", source);
  c.proxy_score = number(j, "proxy_score", source);
  c.layer_importance_kept = number(j, "layer_importance_kept", source);
  const json& w = field(j, "width_factors", source);
  c.width_factor_mamba = number(w, "mamba", source + " width_factors");
  c.width_factor_attention = number(w, "attention", source + " width_factors");
  c.width_factor_mlp = number(w, "mlp", source + " width_factors");
  if (w.contains("moe")) c.width_factor_moe = number(w, "moe", source + " width_factors");
  const json& why = field(j, "why", source);
  if (!why.is_string()) throw InputError(source + ": key \"why\" must be a string");
  c.why = why.get<std::string>();
  c.config = ModelConfig::from_json(field(j, "config", source), source + " config");
  const int64_t kept_n = static_cast<int64_t>(field(j, "kept_layers", source).size());
  const int64_t parent_layers = kept_n + static_cast<int64_t>(field(j, "dropped_layers", source).size());
  c.kept_layers = indices(j, "kept_layers", source, parent_layers);
  c.dropped_layers = indices(j, "dropped_layers", source, parent_layers);
  if (kept_n != c.config.num_layers())
    throw InputError(source + ": kept_layers lists " + std::to_string(kept_n) + " layers but the config has " +
                     std::to_string(c.config.num_layers()));
  c.params = params_from_json(field(j, "params", source), source + " params");
  c.memory = memory_from_json(field(j, "memory", source), source + " memory");
  if (j.contains("measured")) {
    const json& m = j["measured"];
    if (!m.is_object()) throw InputError(source + ": key \"measured\" must be an object of numbers");
    for (auto it = m.begin(); it != m.end(); ++it) c.measured[it.key()] = number(m, it.key().c_str(), source + " measured");
  }
  return c;
}

}  // namespace

json candidates_to_json(const SearchResult& r) {
  json list = json::array();
  for (const Candidate& c : r.candidates) list.push_back(candidate_to_json(c));
  json j = {{"format", kFormat},
          {"version", kVersion},
          {"budget_bytes", r.budget_bytes},
          {"budget_gib", r.budget_bytes / kGiB},
          {"deployment", deployment_to_json(r.deployment)},
          {"evaluated", r.evaluated},
          {"feasible", r.feasible},
          {"min_memory_bytes", r.min_memory_bytes},
          {"candidates", list}};
  if (r.max_active_params > 0) {
    j["max_active_params"] = r.max_active_params;
    j["min_active_params"] = r.min_active_params;
  }
  return j;
}

SearchResult candidates_from_json(const json& j, const std::string& source) {
  const json& format = field(j, "format", source);
  if (format != kFormat)
    throw InputError(source + ": not a candidates file (format is " + format.dump() + ", expected \"" + kFormat + "\")");
  if (integer(j, "version", source) != kVersion)
    throw InputError(source + ": candidates file version " + field(j, "version", source).dump() +
                     " is not supported; this build reads version " + std::to_string(kVersion));
  SearchResult r;
  r.budget_bytes = number(j, "budget_bytes", source);
  r.deployment = deployment_from_json(field(j, "deployment", source), source + " deployment");
  r.evaluated = integer(j, "evaluated", source);
  r.feasible = integer(j, "feasible", source);
  r.min_memory_bytes = number(j, "min_memory_bytes", source);
  if (j.contains("max_active_params")) {
    r.max_active_params = number(j, "max_active_params", source);
    r.min_active_params = number(j, "min_active_params", source);
  }
  const json& list = field(j, "candidates", source);
  if (!list.is_array()) throw InputError(source + ": key \"candidates\" must be an array");
  for (size_t i = 0; i < list.size(); ++i)
    r.candidates.push_back(candidate_from_json(list[i], source + " candidates[" + std::to_string(i) + "]"));
  return r;
}

void save_candidates(const SearchResult& r, const std::filesystem::path& file) {
  write_file_atomic(file, candidates_to_json(r).dump(2) + "\n");
}

SearchResult load_candidates(const std::filesystem::path& file) {
  return candidates_from_json(parse_json_lenient(read_file(file), file.string()), file.string());
}

}  // namespace minipuzzle
