// The scores directory (pruning/importance_scores.cpp, plain C++): the input
// is importance.json, a NUL byte, then importance.safetensors (JSON text
// cannot hold a raw NUL, so the first one splits; no NUL: an empty
// safetensors file). load_importance() reads the directory as `search` and
// `prune --scores` do; accepted scores are then turned into what the search
// consumes and ranked.
#include <algorithm>

#include "fuzz_common.h"
#include "minipuzzle/importance_scores.h"

namespace minipuzzle::fuzz {

void importance_scores(const uint8_t* data, std::size_t size) {
  const auto dir = scratch_dir() / "scores";
  std::filesystem::create_directories(dir);
  const uint8_t* nul = std::find(data, data + size, uint8_t{0});
  const std::size_t json_bytes = static_cast<std::size_t>(nul - data);
  write_bytes(dir / "importance.json", data, json_bytes);
  const std::size_t rest = json_bytes < size ? json_bytes + 1 : size;
  write_bytes(dir / "importance.safetensors", data + rest, size - rest);

  const ImportanceScores s = load_importance(dir);
  const auto j = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(data), json_bytes));
  const ModelConfig c = ModelConfig::from_json(j.at("config"), "importance.json");
  try {
    s.to_search_importance(c).validate(c, "round trip");
  } catch (const std::exception& e) {
    finding(std::string("accepted scores do not convert for the search: ") + e.what());
  }
  const LayerRanks ranks = layer_ranks(s, c);
  for (const auto& [metric, r] : ranks.overall)
    if (static_cast<int64_t>(r.size()) != c.num_layers()) finding("ranks of " + metric + " do not cover every layer");
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::importance_scores)
