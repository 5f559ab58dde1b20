// What every benchmark result says about its run, found by the bench itself
// rather than typed in: the date (UTC), the commit, and the machine (CPU
// model, the CPUs this process may use, the GPU if any). The Python benches
// do the same in run_metadata.py.
//
// --meta KEY=VALUE stays for free notes; the keys filled here are refused.
#pragma once

#include <sched.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

namespace minipuzzle::bench {

// stdout of a shell command, trailing newlines cut; "" when it fails.
inline std::string command_output(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>/dev/null").c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  std::array<char, 256> buf;
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), p) != nullptr) out += buf.data();
  if (::pclose(p) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// Short hash, "-dirty" when tracked files differ from it. A copy with no .git
// (the GPU machine gets the working tree) names it in MINIPUZZLE_COMMIT.
inline std::string commit() {
  const std::string git = "git -C '" + std::string(MINIPUZZLE_SOURCE_DIR) + "' ";
  const std::string head = command_output(git + "rev-parse --short HEAD");
  if (head.empty()) {
    const char* env = std::getenv("MINIPUZZLE_COMMIT");
    return env != nullptr && *env != '\0' ? env : "unknown";
  }
  return head + (command_output(git + "status --porcelain --untracked-files=no").empty() ? "" : "-dirty");
}

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

inline int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::thread::hardware_concurrency());
}

inline nlohmann::json gpu_name() {
  const std::string out = command_output("nvidia-smi --query-gpu=name --format=csv,noheader");
  if (out.empty()) return nullptr;
  return out.substr(0, out.find('\n'));
}

inline std::string utc_date() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

inline void add_run_metadata(nlohmann::json& out) {
  out["date"] = utc_date();
  out["commit"] = commit();
  out["machine"] = {{"cpu", cpu_model()}, {"cpus", usable_cpus()}, {"gpu", gpu_name()}};
}

// One --meta KEY=VALUE note into `out`; false (after one line on stderr)
// when it is malformed or names a key the bench fills itself.
inline bool add_meta_note(nlohmann::json& out, const std::string& kv, const char* bench) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) {
    std::cerr << bench << ": --meta '" << kv << "': expected KEY=VALUE\n";
    return false;
  }
  const std::string key = kv.substr(0, eq);
  if (key == "date" || key == "commit" || key == "machine") {
    std::cerr << bench << ": --meta " << key << "=...: the bench records " << key
              << " itself; --meta is for other notes\n";
    return false;
  }
  out[key] = kv.substr(eq + 1);
  return true;
}

}  // namespace minipuzzle::bench
