// Learning-rate schedules for distillation: linear warmup, then cosine decay
// to min_lr, or WSD (warmup, stable at lr, then a linear decay to min_lr
// over the last `decay_fraction` of the steps), or constant after warmup.
#pragma once

#include <cstdint>
#include <string>

namespace minipuzzle {

struct LrSchedule {
  enum class Kind { Cosine, Wsd, Constant };
  Kind kind = Kind::Cosine;
  double lr = 1e-4, min_lr = 1e-5;
  int64_t warmup_steps = 0, total_steps = 1;
  double decay_fraction = 0.2;  // WSD only

  // Learning rate for optimizer step `step` (0-based).
  double at(int64_t step) const;
  // "cosine" | "wsd" | "constant"; InputError otherwise.
  static Kind parse_kind(const std::string& name);
  static const char* kind_name(Kind k);
  // InputError on lr <= 0, min_lr outside [0, lr], warmup > total, ...
  void validate() const;
};

}  // namespace minipuzzle
