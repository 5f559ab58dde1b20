// Replays the seed corpus tests/fuzz/corpus/<target>/ through the fuzz entry
// points with the normal build, so the suite checks without clang that every
// file stays handled. File names say what must happen:
//   ok-*   must be accepted (the entry point returns),
//   bad-*  must be rejected with InputError,
//   other  (regressions from fuzzing: crash-*, leak-*, ...) accepted or
//          rejected with InputError, never anything else.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "fuzz_common.h"
#include "minipuzzle/errors.h"

namespace minipuzzle::fuzz {

const std::vector<Target>& all_targets() {
  static const std::vector<Target> targets = {
      {"safetensors", &safetensors_header}, {"checkpoint_index", &checkpoint_index},
      {"model_config", &model_config},      {"indexed_dataset", &indexed_dataset},
      {"candidates", &candidates},          {"importance_scores", &importance_scores},
#ifdef MINIPUZZLE_FUZZ_COMPRESS_JOB
      {"compress_job", &compress_job},
#endif
  };
  return targets;
}

// Test names show the target, not the struct's bytes.
void PrintTo(const Target& t, std::ostream* os) { *os << t.name; }

namespace {
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CorpusReplay : public ::testing::TestWithParam<Target> {};

TEST_P(CorpusReplay, EveryFileIsHandled) {
  const Target& t = GetParam();
  const fs::path dir = fs::path(MINIPUZZLE_SOURCE_DIR) / "tests/fuzz/corpus" / t.name;
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  int ok = 0, bad = 0;
  for (const fs::path& f : files) {
    const std::string name = f.filename().string();
    const std::string bytes = slurp(f);
    const bool want_ok = name.rfind("ok-", 0) == 0, want_bad = name.rfind("bad-", 0) == 0;
    std::string outcome;
    try {
      t.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      outcome = "accepted";
    } catch (const InputError& e) {
      outcome = std::string("rejected: ") + e.what();
      if (outcome.find('\n') != std::string::npos) ADD_FAILURE() << name << ": multi-line InputError message";
    } catch (const std::exception& e) {
      ADD_FAILURE() << name << ": exception other than InputError: " << e.what();
      continue;
    }
    const bool accepted = outcome == "accepted";
    if (want_ok) {
      EXPECT_TRUE(accepted) << name << " should be accepted, was " << outcome;
      ++ok;
    } else if (want_bad) {
      EXPECT_FALSE(accepted) << name << " should be rejected with InputError, was accepted";
      ++bad;
    }
  }
  EXPECT_GT(ok, 0) << "no ok-* seed for " << t.name;
  EXPECT_GT(bad, 0) << "no bad-* seed for " << t.name;
  RecordProperty("files", static_cast<int>(files.size()));
}

INSTANTIATE_TEST_SUITE_P(Targets, CorpusReplay, ::testing::ValuesIn(all_targets()),
                         [](const ::testing::TestParamInfo<Target>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace minipuzzle::fuzz
