// The optimizer state of a sharded run (--shard optimizer | gradients) in a
// checkpoint directory: one file per rank, "optimizer-RRRRR-of-NNNNN.safetensors"
// (sharded_adamw.h's write_state), and one manifest,
// "optimizer_manifest.json": the world size, the shard level, the flat
// layout and each file's size and CRC-32. Every rank writes its file into a
// hidden staging directory beside the checkpoints; rank 0 moves them into
// the checkpoint and writes the manifest before the checkpoint directory is
// renamed into place, so a checkpoint is complete only with every part.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "minipuzzle/flat_parameter_layout.h"
#include "minipuzzle/training_memory_plan.h"

namespace minipuzzle {

constexpr const char* kOptimizerManifest = "optimizer_manifest.json";

std::string optimizer_shard_file_name(int rank, int world_size);
// Where the ranks of a checkpoint of `step_dir` stage their files.
std::filesystem::path optimizer_shard_staging(const std::filesystem::path& step_dir);

struct ShardFileRecord {
  std::string file;  // name within the checkpoint
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};
// The size and CRC-32 of a file as it is on disk (InputError naming it when unreadable).
ShardFileRecord shard_file_record(const std::filesystem::path& file);

nlohmann::json optimizer_manifest(const FlatParameterLayout& layout, ShardLevel level, int64_t step,
                                  const std::vector<ShardFileRecord>& files);

// Reads dir's manifest and checks it against this run's layout and level
// (InputError naming the manifest: another model or level). The world size
// may differ: a rank then reads the parts of the old ranks' files that
// overlap its range (re-sharding on load). Returns it.
nlohmann::json read_optimizer_manifest(const std::filesystem::path& dir, const FlatParameterLayout& layout,
                                       ShardLevel level);
// The old ranks (of a checked manifest) whose ranges overlap [lo, hi).
std::vector<int> optimizer_shards_over(const nlohmann::json& manifest, int64_t lo, int64_t hi);
// Checks rank's file against the manifest (present, size, CRC-32):
// empty when it is whole, else the one-line reason naming the file.
std::string check_optimizer_shard(const std::filesystem::path& dir, const nlohmann::json& manifest, int rank);

}  // namespace minipuzzle
