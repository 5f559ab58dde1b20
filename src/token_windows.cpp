#include "minipuzzle/token_windows.h"

#include <string>

#include "minipuzzle/errors.h"

namespace minipuzzle {

namespace {

void check_seq_len(int64_t seq_len) {
  if (seq_len <= 0) throw InputError("sequence length must be positive, got " + std::to_string(seq_len));
}

// splitmix64 (Steele, Lea & Flood 2014; the seeding generator of
// xoshiro): state advances by the golden-ratio constant and each output is
// the state passed through two xor-shift-multiply rounds. All arithmetic is
// on uint64_t, which wraps modulo 2^64 by the language rules, so the stream
// is identical on every compiler and platform. A Python oracle in
// tests/data/test_megatron_format.py re-implements it.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), bound > 0. Plain `next() % bound` favours small
  // values when bound does not divide 2^64; rejecting draws below
  // 2^64 mod bound (computed as (0 - bound) % bound in wrapping arithmetic)
  // leaves a multiple of bound equally likely values. Fewer than half the
  // draws are rejected for any bound.
  uint64_t below(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;
    uint64_t x;
    do x = next();
    while (x < threshold);
    return x % bound;
  }
};

}  // namespace

std::vector<uint64_t> sequential_windows(uint64_t total_tokens, int64_t seq_len, uint64_t max_windows) {
  check_seq_len(seq_len);
  const uint64_t L = static_cast<uint64_t>(seq_len);
  // Window k needs tokens [k*L, k*L + L + 1): the count is the largest k+1
  // with k*L + L + 1 <= total, i.e. (total - 1) / L when at least one fits.
  uint64_t n = total_tokens >= L + 1 ? (total_tokens - 1) / L : 0;
  if (max_windows != 0 && max_windows < n) n = max_windows;
  std::vector<uint64_t> starts(n);
  for (uint64_t k = 0; k < n; ++k) starts[k] = k * L;
  return starts;
}

std::vector<uint64_t> random_windows(uint64_t total_tokens, int64_t seq_len, uint64_t n, uint64_t seed) {
  check_seq_len(seq_len);
  const uint64_t L = static_cast<uint64_t>(seq_len);
  if (total_tokens < L + 1)
    throw InputError("token stream of " + std::to_string(total_tokens) + " tokens is shorter than one window of " +
                     std::to_string(L + 1) + " (sequence length " + std::to_string(L) + " + 1)");
  // Starts 0 .. total - L - 1 inclusive: total - L possible windows.
  const uint64_t choices = total_tokens - L;
  SplitMix64 rng{seed};
  std::vector<uint64_t> starts(n);
  for (auto& s : starts) s = rng.below(choices);
  return starts;
}

}  // namespace minipuzzle
