#include "minipuzzle/atomic_file.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace {
std::atomic<unsigned> g_temp_counter{0};

void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some filesystems refuse directory fds
  ::fsync(fd);
  ::close(fd);
}

// fsync of every regular file under `dir` and of the directories themselves
// (files written without AtomicFile, e.g. a log, reach the disk before the
// directory is renamed into place). A file that cannot be synced is an error.
int fsync_entry(const char* path, const struct stat*, int type, struct FTW*) {
  if (type != FTW_F && type != FTW_D && type != FTW_DP) return 0;
  int fd = ::open(path, type == FTW_F ? O_RDONLY : O_RDONLY | O_DIRECTORY);
  if (fd < 0) return type == FTW_F ? -1 : 0;
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && type == FTW_F) {
    errno = err;
    return -1;
  }
  return 0;
}

bool all_digits(const std::string& s) {
  if (s.empty() || s.size() > 9) return false;  // a pid fits in 9 digits
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// The PID of a stale-looking entry and the target NAME it belonged to.
bool parse_temporary(const std::string& entry, std::string& name, long& pid) {
  // ".NAME.partial-PID"
  const std::string partial = ".partial-";
  std::size_t p = entry.rfind(partial);
  if (entry.size() > 1 && entry[0] == '.' && p != std::string::npos && p > 1 &&
      all_digits(entry.substr(p + partial.size()))) {
    name = entry.substr(1, p - 1);
    pid = std::stol(entry.substr(p + partial.size()));
    return true;
  }
  // "NAME.tmp.PID.N"
  const std::string tmp = ".tmp.";
  p = entry.rfind(tmp);
  if (p != std::string::npos && p > 0) {
    const std::string rest = entry.substr(p + tmp.size());
    const std::size_t dot = rest.find('.');
    if (dot != std::string::npos && all_digits(rest.substr(0, dot)) && all_digits(rest.substr(dot + 1))) {
      name = entry.substr(0, p);
      pid = std::stol(rest.substr(0, dot));
      return true;
    }
  }
  return false;
}

bool process_gone(long pid) {
  if (pid <= 0 || pid == static_cast<long>(::getpid())) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}
}  // namespace

std::size_t remove_stale_temporaries(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  std::size_t removed = 0;
  fs::directory_iterator it(dir.empty() ? fs::path(".") : dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    std::string entry_name;
    long pid = 0;
    const std::string entry = it->path().filename().string();
    if (!parse_temporary(entry, entry_name, pid)) continue;
    if (!name.empty() && entry_name != name) continue;
    if (process_gone(pid) && remove_tree(it->path())) ++removed;
  }
  return removed;
}

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  fs::path dir = target_.parent_path();
  if (!dir.empty() && !fs::is_directory(dir))
    throw InputError("cannot write " + target_.string() + ": directory " + dir.string() +
                     " does not exist");
  std::error_code ec;
  if (fs::is_directory(target_, ec))
    throw InputError("cannot write " + target_.string() + ": it is a directory, expected a file name");
  remove_stale_temporaries(dir, target_.filename().string());
  temp_ = target_;
  temp_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_temp_counter++);
  file_ = std::fopen(temp_.c_str(), "wb");
  if (!file_)
    throw InputError("cannot write " + target_.string() + ": " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) {
    std::error_code ec;
    fs::remove(temp_, ec);
  }
}

void AtomicFile::write(const void* data, std::size_t size) {
  if (size == 0) return;
  if (std::fwrite(data, 1, size, file_) != size)
    throw std::runtime_error("write failed for " + target_.string() + ": " + std::strerror(errno));
  written_ += size;
}

void AtomicFile::flush() {
  if (!file_) throw std::logic_error("AtomicFile::flush after commit");
  if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) {
    int err = errno;
    throw std::runtime_error("write failed for " + target_.string() + ": " + std::strerror(err));
  }
}

void AtomicFile::commit() {
  flush();
  if (std::fclose(file_) != 0) {
    file_ = nullptr;
    throw std::runtime_error("write failed for " + target_.string() + ": " + std::strerror(errno));
  }
  file_ = nullptr;
  if (std::rename(temp_.c_str(), target_.c_str()) != 0)
    throw std::runtime_error("cannot rename " + temp_.string() + " to " + target_.string() + ": " +
                             std::strerror(errno));
  committed_ = true;
  fsync_directory(target_.parent_path());
}

AtomicDirectory::AtomicDirectory(fs::path target) : target_(std::move(target)) {
  std::error_code ec;
  if (target_.filename().empty()) target_ = target_.parent_path();
  fs::path parent = fs::absolute(target_, ec).parent_path();
  if (!fs::is_directory(parent, ec))
    throw InputError("cannot write " + target_.string() + ": directory " + parent.string() + " does not exist");
  if (fs::exists(target_, ec)) {
    if (!fs::is_directory(target_, ec) || !fs::is_empty(target_, ec))
      throw InputError(target_.string() + " already exists and is not empty; choose a new output directory");
  }
  remove_stale_temporaries(parent, target_.filename().string());
  temp_ = parent / ("." + target_.filename().string() + ".partial-" + std::to_string(::getpid()));
  remove_tree(temp_);
  if (!fs::create_directory(temp_, ec))
    throw InputError("cannot create " + temp_.string() + ": " + ec.message());
}

AtomicDirectory::~AtomicDirectory() {
  if (!committed_) {
    std::error_code ec;
    remove_tree(temp_);
  }
}

void AtomicDirectory::commit() {
  if (::nftw(temp_.c_str(), fsync_entry, 16, FTW_PHYS) != 0)
    throw std::runtime_error("write failed for " + target_.string() + ": " + std::strerror(errno));
  std::error_code ec;
  if (fs::exists(target_, ec)) fs::remove(target_, ec);  // an empty directory (checked at construction)
  fs::rename(temp_, target_, ec);
  if (ec) throw std::runtime_error("cannot rename " + temp_.string() + " to " + target_.string() + ": " + ec.message());
  committed_ = true;
  fsync_directory(fs::absolute(target_).parent_path());
}

namespace {
int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  return (type == FTW_DP ? ::rmdir(path) : ::unlink(path)) == 0 ? 0 : -1;
}
}  // namespace

bool remove_tree(const fs::path& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;
  if (!S_ISDIR(st.st_mode)) return ::unlink(path.c_str()) == 0;
  return ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

void write_file_atomic(const fs::path& target, const std::string& content) {
  AtomicFile f(target);
  f.write(content);
  f.commit();
}

std::string read_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError(path.string() + ": file not found");
  if (fs::is_directory(path, ec)) throw InputError(path.string() + ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace minipuzzle
