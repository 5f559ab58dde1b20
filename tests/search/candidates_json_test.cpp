// candidates.json: what the search writes is what prune reads back.
#include "minipuzzle/candidates_json.h"

#include <gtest/gtest.h>

#include "minipuzzle/atomic_file.h"

#include <filesystem>

#include "minipuzzle/errors.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

SearchResult some_result() {
  const ModelConfig parent = test::reference_config("56b");
  SearchOptions o;
  o.deployment = test::paper_deployment();
  o.budget_bytes = test::paper_budget();
  o.top_k = 3;
  return search_architectures(parent, SearchImportance::synthetic(parent), CandidateSpace::paper_grid(parent), o);
}

TEST(CandidatesJson, RoundTripsExactly) {
  const SearchResult r = some_result();
  const nlohmann::json j = candidates_to_json(r);
  EXPECT_EQ(j["format"], "minipuzzle-candidates");
  EXPECT_EQ(j["candidates"].size(), 3u);
  const SearchResult back = candidates_from_json(j, "candidates.json");
  EXPECT_EQ(candidates_to_json(back).dump(), j.dump());
  EXPECT_TRUE(back.candidates[0].config == r.candidates[0].config);
  EXPECT_EQ(back.candidates[0].kept_layers, r.candidates[0].kept_layers);
}

TEST(CandidatesJson, SavesAndLoadsAFile) {
  const auto dir = std::filesystem::temp_directory_path() / ("mp_candidates_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const SearchResult r = some_result();
  save_candidates(r, dir / "candidates.json");
  EXPECT_EQ(candidates_to_json(load_candidates(dir / "candidates.json")).dump(), candidates_to_json(r).dump());
  minipuzzle::remove_tree(dir);
}

TEST(CandidatesJson, WrongFormatIsInputError) {
  nlohmann::json j = candidates_to_json(some_result());
  j["format"] = "something-else";
  EXPECT_THROW(candidates_from_json(j, "x.json"), InputError);
  j = candidates_to_json(some_result());
  j["version"] = 99;
  EXPECT_THROW(candidates_from_json(j, "x.json"), InputError);
}

TEST(CandidatesJson, KeptLayersThatDisagreeWithTheConfigAreInputError) {
  nlohmann::json j = candidates_to_json(some_result());
  j["candidates"][0]["kept_layers"].erase(0);
  EXPECT_THROW(candidates_from_json(j, "x.json"), InputError);
  j = candidates_to_json(some_result());
  j["candidates"][0].erase("memory");
  EXPECT_THROW(candidates_from_json(j, "x.json"), InputError);
}

// Found by fuzzing (tests/fuzz): deep nesting overflowed the stack when the
// document was copied; load_candidates now rejects it while parsing.
TEST(CandidatesJson, DeeplyNestedFileIsInputError) {
  const auto dir = std::filesystem::temp_directory_path() / ("mp_candidates_deep_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  write_file_atomic(dir / "candidates.json",
                    "{\"format\": \"minipuzzle-candidates\", \"x\": " + std::string(100000, '[') +
                        std::string(100000, ']') + "}");
  try {
    load_candidates(dir / "candidates.json");
    ADD_FAILURE() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper than 64 levels"), std::string::npos) << e.what();
  }
  minipuzzle::remove_tree(dir);
}

}  // namespace
}  // namespace minipuzzle
