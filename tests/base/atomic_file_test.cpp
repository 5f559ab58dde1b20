#include <gtest/gtest.h>

#include <filesystem>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"

namespace fs = std::filesystem;
using namespace minipuzzle;

namespace {
fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("mp_atomic_" + name + "_" + std::to_string(::getpid()));
  minipuzzle::remove_tree(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST(AtomicFile, NothingVisibleUntilCommit) {
  auto d = fresh_dir("commit");
  {
    AtomicFile f(d / "out.bin");
    f.write("hello");
    EXPECT_FALSE(fs::exists(d / "out.bin"));
    f.commit();
  }
  EXPECT_EQ(read_file(d / "out.bin"), "hello");
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
}

TEST(AtomicFile, AbandonedWriteLeavesNoFile) {
  auto d = fresh_dir("abandon");
  {
    AtomicFile f(d / "out.bin");
    f.write("partial");
  }
  EXPECT_TRUE(fs::is_empty(d));
}

TEST(AtomicFile, MissingDirectoryIsAnInputError) {
  EXPECT_THROW(AtomicFile("/nonexistent-dir-xyz/out.bin"), InputError);
}

TEST(AtomicDirectory, AppearsWholeOnCommitOnly) {
  auto d = fresh_dir("dir");
  {
    AtomicDirectory out(d / "model");
    write_file_atomic(out.path() / "a.txt", "a");
    EXPECT_FALSE(fs::exists(d / "model"));
    out.commit();
  }
  EXPECT_EQ(read_file(d / "model" / "a.txt"), "a");
  {
    AtomicDirectory out(d / "abandoned");
    write_file_atomic(out.path() / "a.txt", "a");
  }
  EXPECT_FALSE(fs::exists(d / "abandoned"));
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
}

TEST(AtomicDirectory, RefusesNonEmptyTarget) {
  auto d = fresh_dir("nonempty");
  fs::create_directories(d / "model");
  write_file_atomic(d / "model" / "x", "x");
  EXPECT_THROW(AtomicDirectory(d / "model"), InputError);
}

TEST(ReadFile, MissingFileNamesThePath) {
  try {
    read_file("/nonexistent-xyz/config.json");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-xyz/config.json"), std::string::npos);
  }
}
