// Atomic file writes: write to a temporary file beside the target, fsync it,
// rename it over the target, fsync the directory. A reader (or a resumed run)
// sees either the old file, the complete new one, or nothing; never a
// half-written file under the final name.
#pragma once

#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <string>

namespace minipuzzle {

class AtomicFile {
 public:
  // Opens "<target>.tmp.<pid>.<n>" for writing (after removing the ones of
  // killed writers). Throws InputError when the directory does not exist or
  // is not writable.
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void write(const std::string& text) { write(text.data(), text.size()); }
  std::size_t bytes_written() const { return written_; }

  // Flush + fsync of what was written so far. Throws std::runtime_error on
  // I/O failure (full disk included). commit() does it too.
  void flush();

  // fsync + rename + directory fsync. Throws std::runtime_error on I/O
  // failure (full disk included); the target is then left untouched.
  void commit();

  const std::filesystem::path& target() const { return target_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::FILE* file_ = nullptr;
  std::size_t written_ = 0;
  bool committed_ = false;
};

// A directory written as a whole: files go into a hidden sibling
// ".<name>.partial-<pid>" and commit() fsyncs every file in it, then renames it
// to the target. The target must not exist or be an empty directory
// (InputError otherwise), so an interrupted write never leaves a directory
// that looks complete; partial directories of killed writers of the same
// target are removed at construction.
class AtomicDirectory {
 public:
  explicit AtomicDirectory(std::filesystem::path target);
  ~AtomicDirectory();  // removes the partial directory unless committed
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;
  const std::filesystem::path& path() const { return temp_; }  // write here
  const std::filesystem::path& target() const { return target_; }
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  bool committed_ = false;
};

// Removes a file or a directory tree (not following symlinks); a missing path
// is not an error. Returns false when something could not be removed. Use
// this, not std::filesystem::remove_all: the LibTorch wheel's libtorch.so
// exports its own copy of the std::filesystem functions, the dynamic linker
// binds every torch-linked binary to it, and its remove_all crashes
// (SIGSEGV) on a non-empty directory.
bool remove_tree(const std::filesystem::path& path);

// Removes what writers killed on this machine left in `dir`: hidden partial
// directories ".NAME.partial-PID" and temporary files "NAME.tmp.PID.N" whose
// process PID no longer runs (a live or unknown PID is left alone, as is
// anything else). With `name`, only those of that target NAME. AtomicFile and
// AtomicDirectory call it for their own target, so rerunning a killed command
// cleans up after it. Returns how many entries were removed.
std::size_t remove_stale_temporaries(const std::filesystem::path& dir, const std::string& name = "");

// Convenience: the whole content at once.
void write_file_atomic(const std::filesystem::path& target, const std::string& content);

// Reads a whole file; InputError naming the path when it cannot.
std::string read_file(const std::filesystem::path& path);

}  // namespace minipuzzle
