#include "local_processes.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace minipuzzle::cli {
namespace {

volatile sig_atomic_t g_forward_signal = 0;

void remember_signal(int sig) { g_forward_signal = sig; }

// A port nobody listens on now (the kernel's pick for port 0). Another
// process could take it before rank 0 binds it; rank 0 then fails with
// "address in use" and the stage can be rerun.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) throw std::runtime_error(std::string("finding a free port: ") + std::strerror(err));
  return ntohs(addr.sin_port);
}

bool launcher_variable(const std::string& entry) {
  for (const char* prefix : {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=",
                             "MASTER_PORT=", "TORCHELASTIC_", "SLURM_"})
    if (entry.rfind(prefix, 0) == 0) return true;
  return false;
}

// This process's environment without any launcher's variables, plus ours.
std::vector<std::string> rank_environment(int rank, int world, int port) {
  std::vector<std::string> env;
  bool has_threads = false;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    if (launcher_variable(entry)) continue;
    if (entry.rfind("OMP_NUM_THREADS=", 0) == 0) has_threads = true;
    env.push_back(entry);
  }
  env.push_back(fmt::format("RANK={}", rank));
  env.push_back(fmt::format("LOCAL_RANK={}", rank));
  env.push_back(fmt::format("WORLD_SIZE={}", world));
  env.push_back(fmt::format("LOCAL_WORLD_SIZE={}", world));
  env.push_back("MASTER_ADDR=127.0.0.1");
  env.push_back(fmt::format("MASTER_PORT={}", port));
  if (!has_threads) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    env.push_back(fmt::format("OMP_NUM_THREADS={}", std::max(1u, cores / static_cast<unsigned>(world))));
  }
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

std::string local_processes_command(const std::vector<std::string>& argv, int processes) {
  std::string line = fmt::format("torchrun --standalone --nproc-per-node {} --no-python minipuzzle", processes);
  for (const auto& a : argv) line += " " + a;
  return line;
}

int run_local_processes(const std::vector<std::string>& argv, int processes) {
  if (processes < 1) throw std::logic_error("run_local_processes: processes < 1");
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const int port = free_port();
  // Everything the children need is built before fork: between fork and exec
  // only async-signal-safe calls.
  std::vector<std::string> args = {self};
  args.insert(args.end(), argv.begin(), argv.end());
  std::vector<char*> c_args = c_strings(args);
  std::vector<std::vector<std::string>> envs;
  std::vector<std::vector<char*>> c_envs;
  for (int r = 0; r < processes; ++r) envs.push_back(rank_environment(r, processes, port));
  for (auto& e : envs) c_envs.push_back(c_strings(e));

  struct sigaction forward{}, old_int{}, old_term{};
  forward.sa_handler = remember_signal;
  sigemptyset(&forward.sa_mask);
  g_forward_signal = 0;
  ::sigaction(SIGINT, &forward, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);

  const pid_t parent = ::getpid();
  std::vector<pid_t> pids;
  for (int r = 0; r < processes; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (pid_t p : pids) ::kill(p, SIGKILL);
      for (pid_t p : pids) ::waitpid(p, nullptr, 0);
      ::sigaction(SIGINT, &old_int, nullptr);
      ::sigaction(SIGTERM, &old_term, nullptr);
      throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(137);  // the parent died before prctl
      ::execve(self.c_str(), c_args.data(), c_envs[static_cast<size_t>(r)].data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }

  int result = 0, running = processes;
  bool forwarded = false, killed = false;
  while (running > 0) {
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, 0);
    if (done < 0) {
      if (errno != EINTR) break;
      if (g_forward_signal && !forwarded) {
        for (pid_t p : pids) ::kill(p, g_forward_signal);
        forwarded = true;
      }
      continue;
    }
    const auto it = std::find(pids.begin(), pids.end(), done);
    if (it == pids.end()) continue;  // not one of ours
    *it = -1;
    --running;
    const int rc = exit_code(status);
    if (rc != 0 && (result == 0 || result == 130)) result = rc;
    // A failed rank: the others would wait in a collective until it times out.
    if (rc != 0 && rc != 130 && !killed) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      killed = true;
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  if (result == 0 && g_forward_signal) result = 130;
  return result;
}

}  // namespace minipuzzle::cli
