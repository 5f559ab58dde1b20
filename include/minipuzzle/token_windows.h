// Which token windows a job reads from a dataset's flat token stream.
// Deterministic for a given seed on every platform (no std:: distributions,
// whose output is implementation-defined).
#pragma once

#include <cstdint>
#include <vector>

namespace minipuzzle {

// Start offsets of consecutive, non-overlapping windows of seq_len+1 tokens
// (inputs plus the shifted targets; window k starts at k*seq_len), at most
// max_windows of them (0 = as many as fit in total_tokens).
std::vector<uint64_t> sequential_windows(uint64_t total_tokens, int64_t seq_len, uint64_t max_windows = 0);

// n start offsets of windows of seq_len+1 tokens drawn uniformly from
// [0, total_tokens - seq_len - 1] with a seeded 64-bit generator; same seed,
// same offsets. InputError when the stream is shorter than one window.
std::vector<uint64_t> random_windows(uint64_t total_tokens, int64_t seq_len, uint64_t n, uint64_t seed);

}  // namespace minipuzzle
