// candidates.json (search/candidates_json.cpp): the input is the file that
// `prune --candidate FILE#i` reads, through load_candidates(). An accepted
// file must write back (candidates_to_json) to one that reads back.
#include "fuzz_common.h"
#include "minipuzzle/candidates_json.h"

namespace minipuzzle::fuzz {

void candidates(const uint8_t* data, std::size_t size) {
  const auto path = scratch_dir() / "candidates.json";
  write_bytes(path, data, size);
  const SearchResult r = load_candidates(path);
  for (const Candidate& c : r.candidates) {
    if (static_cast<int64_t>(c.kept_layers.size()) != c.config.num_layers())
      finding("accepted a candidate whose kept_layers disagree with its config");
  }
  try {
    (void)candidates_from_json(nlohmann::json::parse(candidates_to_json(r).dump()), "round trip");
  } catch (const std::exception& e) {
    finding(std::string("accepted candidates do not read back after candidates_to_json(): ") + e.what());
  }
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::candidates)
