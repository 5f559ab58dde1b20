#include "fuzz_common.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <typeinfo>

#include <unistd.h>

#include "minipuzzle/errors.h"

namespace minipuzzle::fuzz {
namespace fs = std::filesystem;

namespace {

struct Scratch {
  fs::path dir;
  Scratch() {
    // tmpfs when there is one: the targets write a file per input, and on a
    // disk that costs more than the parsing (7x fewer executions).
    std::string base = "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
    if (::access("/dev/shm", W_OK | X_OK) == 0) base = "/dev/shm";
    if (const char* t = std::getenv("MINIPUZZLE_FUZZ_TMP"); t && *t) base = t;
    std::string tmpl = base + "/minipuzzle-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    dir = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace

const fs::path& scratch_dir() {
  static Scratch scratch;
  return scratch.dir;
}

void write_bytes(const fs::path& path, const uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (size) out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) finding("fuzz harness: cannot write " + path.string());
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  write_bytes(path, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

void finding(const std::string& what) {
  std::fprintf(stderr, "FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

int run_one(EntryPoint entry, const uint8_t* data, std::size_t size) {
  try {
    entry(data, size);
  } catch (const InputError&) {
    // The correct rejection.
  } catch (const std::exception& e) {
    finding(std::string("exception other than InputError escaped (") + typeid(e).name() + "): " + e.what());
  } catch (...) {
    finding("non-std exception escaped");
  }
  return 0;
}

}  // namespace minipuzzle::fuzz
