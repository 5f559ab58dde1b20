#include "minipuzzle/window_order.h"

#include <fmt/format.h>

#include "minipuzzle/errors.h"

namespace minipuzzle {

namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

WindowOrder::WindowOrder(uint64_t total_tokens, int64_t seq_len, uint64_t seed) : seq_len_(seq_len), seed_(seed) {
  if (seq_len <= 0) throw InputError("--seq-len must be positive");
  if (total_tokens < static_cast<uint64_t>(seq_len) + 1)
    throw InputError(fmt::format("the dataset has {} tokens, fewer than one window of --seq-len {} + 1",
                                 total_tokens, seq_len));
  n_ = (total_tokens - 1) / static_cast<uint64_t>(seq_len);
  int bits = 2;
  while ((uint64_t{1} << bits) < n_) bits += 2;  // domain 2^bits >= n, even split
  half_bits_ = bits / 2;
}

uint64_t WindowOrder::permute(uint64_t epoch, uint64_t i) const {
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  const uint64_t key = mix(seed_ ^ mix(epoch + 0x51ED270B27A1F3ULL));
  uint64_t x = i;
  // Cycle walking: apply the permutation of [0, 2^bits) until inside [0, n).
  do {
    uint64_t l = x >> half_bits_, r = x & mask;
    for (int round = 0; round < 4; ++round) {
      const uint64_t f = mix(r ^ mix(key + static_cast<uint64_t>(round))) & mask;
      const uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    x = (l << half_bits_) | r;
  } while (x >= n_);
  return x;
}

uint64_t WindowOrder::start(uint64_t epoch, uint64_t i) const {
  return permute(epoch, i) * static_cast<uint64_t>(seq_len_);
}

std::vector<uint64_t> WindowOrder::take(Position& pos, int64_t count) const {
  std::vector<uint64_t> out;
  out.reserve(static_cast<std::size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    out.push_back(start(pos.epoch, pos.index));
    if (++pos.index == n_) {
      pos.index = 0;
      ++pos.epoch;
    }
  }
  return out;
}

}  // namespace minipuzzle
