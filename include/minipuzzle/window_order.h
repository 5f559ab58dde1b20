// The order in which training reads a dataset's windows: every window of
// seq_len+1 tokens (window k starts at flat token k*seq_len) once per epoch,
// in a seeded pseudo-random permutation that differs per epoch. The
// permutation is a keyed Feistel network with cycle walking, so it needs no
// memory however many windows there are, and position (epoch, index) is all
// a checkpoint needs to resume exactly.
#pragma once

#include <cstdint>
#include <vector>

namespace minipuzzle {

class WindowOrder {
 public:
  // InputError when the stream holds no whole window.
  WindowOrder(uint64_t total_tokens, int64_t seq_len, uint64_t seed);
  uint64_t windows() const { return n_; }
  // Start offset of the i-th window of `epoch` (i < windows()).
  uint64_t start(uint64_t epoch, uint64_t i) const;

  // Reading position: the next window handed out.
  struct Position {
    uint64_t epoch = 0, index = 0;
  };
  // The next `count` window starts from `pos`, advancing it (wrapping into
  // the next epoch).
  std::vector<uint64_t> take(Position& pos, int64_t count) const;

 private:
  uint64_t permute(uint64_t epoch, uint64_t i) const;
  uint64_t n_;
  int64_t seq_len_;
  uint64_t seed_;
  int half_bits_;
};

}  // namespace minipuzzle
