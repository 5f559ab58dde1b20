// Loading a ~1 GB safetensors file with our reader against the Python
// `safetensors` package on the same file, in the same run, page cache warm
// for both. Prints one JSON object. Like for like, two pairs:
//   view:  safetensors.torch.load_file (0.8 returns tensors that alias its
//          mmap, nothing is copied) vs our open() + a pointer per tensor;
//   owned: load_file + clone() of every tensor vs our open() + new[] and
//          memcpy per tensor. Copying is dominated by first-touch page faults
//          of the fresh memory, so "owned_thp" shows the same copy into
//          2 MiB-aligned buffers advised MADV_HUGEPAGE.
//
//   bench_safetensors_load [--file F] [--mb 1024] [--runs 5] [--python PY] [--meta KEY=VALUE ...]
// (with the run's date, commit and machine: run_metadata.h)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "minipuzzle/safetensors.h"
#include "run_metadata.h"

using namespace minipuzzle;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Tensors of 4 MiB alternating BF16 [2048,1024] and F32 [1024,1024], like the
// large projection matrices of a checkpoint.
void make_file(const fs::path& path, std::size_t megabytes) {
  const std::size_t per = 4u << 20, count = std::max<std::size_t>(1, megabytes / 4);
  std::vector<uint8_t> bytes(per);
  for (std::size_t i = 0; i < per; ++i) bytes[i] = uint8_t(i * 2654435761u >> 24);
  std::vector<TensorView> views;
  for (std::size_t i = 0; i < count; ++i) {
    bool bf16 = i % 2 == 0;
    views.push_back({"layers." + std::to_string(i) + ".weight", bf16 ? DType::BF16 : DType::F32,
                     bf16 ? std::vector<int64_t>{2048, 1024} : std::vector<int64_t>{1024, 1024},
                     bytes.data(), per});
  }
  write_safetensors(path, views);
}

void warm_page_cache(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path.string());
  std::vector<char> buf(8u << 20);
  while (::read(fd, buf.data(), buf.size()) > 0) {
  }
  ::close(fd);
}

enum class Mode { view, owned, owned_thp };

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

uint8_t* allocate(std::size_t n, Mode mode) {
  if (mode == Mode::owned) return static_cast<uint8_t*>(std::malloc(n));
  constexpr std::size_t kHuge = 2u << 20;
  std::size_t rounded = (n + kHuge - 1) / kHuge * kHuge;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kHuge, rounded));
  if (p) ::madvise(p, rounded, MADV_HUGEPAGE);
  return p;
}

double ours_once(const fs::path& path, Mode mode, uint64_t* checksum) {
  auto t0 = Clock::now();
  auto file = SafetensorsFile::open(path);
  std::vector<const uint8_t*> views;
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> owned;
  views.reserve(file->tensors().size());
  owned.reserve(file->tensors().size());
  for (const auto& t : file->tensors()) {
    if (mode == Mode::view) {
      views.push_back(file->data(t));
      continue;
    }
    owned.emplace_back(allocate(t.nbytes(), mode));
    std::memcpy(owned.back().get(), file->data(t), t.nbytes());
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const auto& b : owned) *checksum += b.get()[0];  // keeps the copies observable
  *checksum += views.size();
  return s;
}

const char* kPythonScript = R"PY(
import json, sys, time
from safetensors.torch import load_file
path, runs = sys.argv[1], int(sys.argv[2])
load_file(path)  # warm-up: imports, page cache
out = {"view": [], "owned": []}
for _ in range(runs):
    t0 = time.perf_counter()
    d = load_file(path)
    out["view"].append(time.perf_counter() - t0)
    del d
for _ in range(runs):
    t0 = time.perf_counter()
    d = {k: v.clone() for k, v in load_file(path).items()}
    out["owned"].append(time.perf_counter() - t0)
    del d
import safetensors, torch
out.update(safetensors=safetensors.__version__, torch=torch.__version__,
           torch_threads=torch.get_num_threads())
print(json.dumps(out))
)PY";

nlohmann::json python_times(const std::string& python, const fs::path& path, int runs) {
  fs::path script = fs::temp_directory_path() / ("bench_st_" + std::to_string(::getpid()) + ".py");
  { std::FILE* f = std::fopen(script.c_str(), "w"); std::fputs(kPythonScript, f); std::fclose(f); }
  std::string cmd = "'" + python + "' '" + script.string() + "' '" + path.string() + "' " +
                    std::to_string(runs);
  std::FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  int rc = p ? ::pclose(p) : -1;
  fs::remove(script);
  if (rc != 0) throw std::runtime_error("python baseline failed: " + cmd);
  return nlohmann::json::parse(out);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path file;
  std::size_t mb = 1024;
  int runs = 5;
  nlohmann::json notes = nlohmann::json::object();
#ifdef MINIPUZZLE_PYTHON
  std::string python = MINIPUZZLE_PYTHON;
#else
  std::string python = "python3";
#endif
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--file") file = argv[i + 1];
    else if (a == "--mb") mb = std::stoul(argv[i + 1]);
    else if (a == "--runs") runs = std::stoi(argv[i + 1]);
    else if (a == "--python") python = argv[i + 1];
    else if (a == "--meta") {
      if (!minipuzzle::bench::add_meta_note(notes, argv[i + 1], "bench_safetensors_load")) return 2;
    } else { std::cerr << "unknown argument " << a << "\n"; return 2; }
  }
  bool made = file.empty();
  if (made) {
    file = fs::temp_directory_path() / ("bench_st_" + std::to_string(::getpid()) + ".safetensors");
    make_file(file, mb);
  }
  try {
    warm_page_cache(file);
    uint64_t checksum = 0;
    auto probe = SafetensorsFile::open(file);
    const double gb = double(fs::file_size(file)) / 1e9;
    nlohmann::json out = {{"bench", "safetensors_load"},
                          {"file_bytes", fs::file_size(file)},
                          {"tensors", probe->tensors().size()},
                          {"runs", runs}};
    std::map<std::string, double> ours_median;
    for (auto [name, mode] : {std::pair{"view", Mode::view}, std::pair{"owned", Mode::owned},
                              std::pair{"owned_thp", Mode::owned_thp}}) {
      ours_once(file, mode, &checksum);  // warm-up, as the Python side does
      std::vector<double> times;
      for (int r = 0; r < runs; ++r) times.push_back(ours_once(file, mode, &checksum));
      ours_median[name] = median(times);
      out["ours"][name] = {{"runs_s", times}, {"median_s", median(times)},
                           {"GBps", gb / median(times)}};
    }
    auto py = python_times(python, file, runs);
    for (const char* name : {"view", "owned"}) {
      auto times = py[name].get<std::vector<double>>();
      out["python"][name] = {{"runs_s", times}, {"median_s", median(times)},
                             {"GBps", gb / median(times)}};
      // > 1: we are faster than Python on the same work.
      out["speedup_vs_python"][name] = median(times) / ours_median[name];
    }
    out["speedup_vs_python"]["owned_thp_vs_python_owned"] =
        py["owned"].get<std::vector<double>>().empty()
            ? 0.0
            : median(py["owned"].get<std::vector<double>>()) / ours_median["owned_thp"];
    out["python_versions"] = {{"safetensors", py["safetensors"]}, {"torch", py["torch"]},
                              {"torch_threads", py["torch_threads"]}};
    out["checksum"] = checksum;
    minipuzzle::bench::add_run_metadata(out);
    out.update(notes);
    std::cout << out.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "bench_safetensors_load: " << e.what() << "\n";
    if (made) fs::remove(file);
    return 1;
  }
  if (made) fs::remove(file);
  return 0;
}
