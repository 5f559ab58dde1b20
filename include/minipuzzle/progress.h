// A progress line (done/total, rate, ETA) on stderr when it is a terminal;
// silent otherwise, so logs and CI output stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace minipuzzle {

class Progress {
 public:
  Progress(std::string label, uint64_t total, std::string unit = "tok");
  ~Progress();  // ends the line
  void update(uint64_t done);
  double elapsed_seconds() const;

 private:
  std::string label_, unit_;
  uint64_t total_;
  bool tty_;
  bool printed_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace minipuzzle
