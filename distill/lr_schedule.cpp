#include "minipuzzle/lr_schedule.h"

#include <fmt/format.h>

#include <cmath>

#include "minipuzzle/errors.h"

namespace minipuzzle {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * static_cast<double>(step + 1) / warmup_steps;
  const int64_t after = step - warmup_steps, span = std::max<int64_t>(total_steps - warmup_steps, 1);
  switch (kind) {
    case Kind::Constant: return lr;
    case Kind::Cosine: {
      const double progress = std::min(1.0, static_cast<double>(after) / span);
      return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
    }
    case Kind::Wsd: {
      const auto decay = static_cast<int64_t>(std::ceil(decay_fraction * static_cast<double>(span)));
      const int64_t decay_start = span - decay;
      if (after < decay_start || decay <= 0) return lr;
      const double progress = std::min(1.0, static_cast<double>(after - decay_start + 1) / decay);
      return lr + (min_lr - lr) * progress;
    }
  }
  return lr;
}

LrSchedule::Kind LrSchedule::parse_kind(const std::string& name) {
  if (name == "cosine") return Kind::Cosine;
  if (name == "wsd") return Kind::Wsd;
  if (name == "constant") return Kind::Constant;
  throw InputError(fmt::format("--schedule '{}': expected cosine, wsd or constant", name));
}

const char* LrSchedule::kind_name(Kind k) {
  return k == Kind::Cosine ? "cosine" : k == Kind::Wsd ? "wsd" : "constant";
}

void LrSchedule::validate() const {
  if (!(lr > 0) || !std::isfinite(lr)) throw InputError(fmt::format("--lr must be positive, got {}", lr));
  if (!(min_lr >= 0 && min_lr <= lr)) throw InputError(fmt::format("--min-lr must be in [0, --lr], got {}", min_lr));
  if (total_steps <= 0) throw InputError("--steps must be positive");
  if (warmup_steps < 0 || warmup_steps > total_steps)
    throw InputError(fmt::format("--warmup {} must be in [0, --steps {}]", warmup_steps, total_steps));
  if (!(decay_fraction >= 0 && decay_fraction <= 1))
    throw InputError(fmt::format("--decay-fraction must be in [0, 1], got {}", decay_fraction));
}

}  // namespace minipuzzle
