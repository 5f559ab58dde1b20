// The flat layout of the trainable parameters that the sharded optimizer
// levels (--shard optimizer | gradients) cut into ranks' ranges, as
// Megatron's distributed optimizer does: the parameters in named_parameters
// order, end to end, padded at the end so that every rank owns a contiguous
// range of the same length. A rank keeps fp32 master + Adam moments (and at
// `gradients` the reduced gradient) only for its range. The layout is
// written into the manifest of a sharded checkpoint, and a resume must find
// the same one.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace minipuzzle {

struct FlatParameterLayout {
  struct Entry {
    std::string name;
    int64_t offset = 0, numel = 0;  // where the parameter starts in the flat order, its elements
  };
  std::vector<Entry> entries;
  int64_t total = 0;  // elements of all parameters
  int64_t shard = 0;  // elements per rank: ceil(total / world_size); the last rank's range ends in padding
  int world_size = 1;

  static FlatParameterLayout of(const std::vector<std::pair<std::string, torch::Tensor>>& named, int world_size);
  int64_t padded() const { return shard * world_size; }
  int64_t begin(int rank) const { return shard * rank; }
  int64_t end(int rank) const { return shard * (rank + 1); }

  // The parts of the flat range [lo, hi) that fall into parameters (padding
  // has none), in flat order.
  struct Piece {
    std::size_t entry;  // index into entries
    int64_t start;      // first element within the parameter
    int64_t numel;
    int64_t flat;       // its flat position
  };
  std::vector<Piece> pieces(int64_t lo, int64_t hi) const;

  // {"world_size", "total", "shard", "parameters": [[name, numel], ...]}
  nlohmann::json to_json() const;
  // Empty when `j` lays out the same parameters (at any world size, its
  // shard length consistent with it), else what differs (one phrase).
  std::string difference(const nlohmann::json& j) const;
};

}  // namespace minipuzzle
