#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

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

TEST(AtomicFile, ADirectoryInTheWayIsAnInputErrorBeforeAnyWrite) {
  auto d = fresh_dir("in_the_way");
  fs::create_directory(d / "out.bin");
  EXPECT_THROW(AtomicFile(d / "out.bin"), InputError);
  EXPECT_TRUE(fs::is_empty(d / "out.bin"));
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);  // no temporary left
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

// ---------------------------------------------------------------- crash leftovers, full disk

namespace {
// A PID that ran and is gone (reused only after the PID space wraps around).
long dead_pid() {
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return static_cast<long>(child);
}

void touch(const fs::path& p) { std::ofstream(p) << "x"; }
}  // namespace

TEST(AtomicFile, RemovesTemporariesOfKilledWritersOfItsTarget) {
  auto d = fresh_dir("stale_file");
  const std::string dead = std::to_string(dead_pid()), live = std::to_string(::getppid());
  touch(d / ("out.bin.tmp." + dead + ".0"));    // a killed writer of out.bin: removed
  touch(d / ("out.bin.tmp." + live + ".3"));    // a running one: kept
  touch(d / ("other.bin.tmp." + dead + ".0"));  // another target: kept
  touch(d / "out.bin.tmp.notapid.0");           // not ours: kept
  write_file_atomic(d / "out.bin", "new");
  EXPECT_FALSE(fs::exists(d / ("out.bin.tmp." + dead + ".0")));
  EXPECT_TRUE(fs::exists(d / ("out.bin.tmp." + live + ".3")));
  EXPECT_TRUE(fs::exists(d / ("other.bin.tmp." + dead + ".0")));
  EXPECT_TRUE(fs::exists(d / "out.bin.tmp.notapid.0"));
  EXPECT_EQ(read_file(d / "out.bin"), "new");
}

TEST(AtomicDirectory, RemovesPartialsOfKilledWritersOfItsTarget) {
  auto d = fresh_dir("stale_dir");
  const std::string dead = std::to_string(dead_pid()), live = std::to_string(::getppid());
  fs::create_directories(d / (".model.partial-" + dead) / "sub");
  touch(d / (".model.partial-" + dead) / "sub" / "model.safetensors.tmp.1.0");
  fs::create_directories(d / (".model.partial-" + live));
  fs::create_directories(d / (".other.partial-" + dead));
  {
    AtomicDirectory out(d / "model");
    write_file_atomic(out.path() / "a.txt", "a");
    out.commit();
  }
  EXPECT_FALSE(fs::exists(d / (".model.partial-" + dead)));
  EXPECT_TRUE(fs::exists(d / (".model.partial-" + live)));
  EXPECT_TRUE(fs::exists(d / (".other.partial-" + dead)));
  // Without a name: everything stale in the directory (what a run directory's owner calls).
  EXPECT_EQ(remove_stale_temporaries(d), 1u);
  EXPECT_FALSE(fs::exists(d / (".other.partial-" + dead)));
  EXPECT_TRUE(fs::exists(d / (".model.partial-" + live)));
  EXPECT_EQ(read_file(d / "model" / "a.txt"), "a");
}

namespace {
// RLIMIT_FSIZE with SIGXFSZ ignored: write() past the limit fails with EFBIG,
// as on a full disk. Restored when the guard goes.
struct FileSizeLimit {
  struct rlimit old {};
  void (*old_handler)(int) = nullptr;
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &old);
    old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &lim);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
};
}  // namespace

TEST(AtomicFile, FullDiskThrowsAndLeavesNothing) {
  auto d = fresh_dir("full_file");
  write_file_atomic(d / "out.bin", "old");
  const std::string big(1 << 20, 'x');
  {
    FileSizeLimit limit(64 << 10);
    EXPECT_THROW(write_file_atomic(d / "out.bin", big), std::runtime_error);
    EXPECT_THROW(write_file_atomic(d / "new.bin", big), std::runtime_error);
  }
  EXPECT_EQ(read_file(d / "out.bin"), "old");  // the previous file, untouched
  EXPECT_FALSE(fs::exists(d / "new.bin"));
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
}

TEST(AtomicDirectory, FullDiskAbandonsTheWholeDirectory) {
  auto d = fresh_dir("full_dir");
  {
    AtomicDirectory out(d / "model");
    write_file_atomic(out.path() / "a.txt", "a");
    {
      FileSizeLimit limit(64 << 10);
      EXPECT_THROW(write_file_atomic(out.path() / "b.bin", std::string(1 << 20, 'x')), std::runtime_error);
    }
  }  // abandoned: nothing left
  EXPECT_TRUE(fs::is_empty(d));
}
