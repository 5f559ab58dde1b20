#include "minipuzzle/progress.h"

#include <unistd.h>

#include <cstdio>

namespace minipuzzle {

Progress::Progress(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(::isatty(2) == 1),
      start_(std::chrono::steady_clock::now()), last_(start_) {}

Progress::~Progress() {
  if (printed_) std::fputc('\n', stderr);
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(uint64_t done) {
  if (!tty_) return;
  auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  double secs = elapsed_seconds();
  double rate = secs > 0 ? done / secs : 0;
  double eta = rate > 0 ? (total_ - done) / rate : 0;
  std::fprintf(stderr, "\r%s %llu/%llu %s  %.0f %s/s  ETA %.0fs   ", label_.c_str(),
               static_cast<unsigned long long>(done), static_cast<unsigned long long>(total_), unit_.c_str(), rate,
               unit_.c_str(), eta);
  std::fflush(stderr);
  printed_ = true;
}

}  // namespace minipuzzle
