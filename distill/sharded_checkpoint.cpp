#include "minipuzzle/sharded_checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <vector>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/json_read_back.h"
#include "minipuzzle/plot_png.h"

namespace minipuzzle {
namespace fs = std::filesystem;

std::string optimizer_shard_file_name(int rank, int world_size) {
  return fmt::format("optimizer-{:05d}-of-{:05d}.safetensors", rank, world_size);
}

fs::path optimizer_shard_staging(const fs::path& step_dir) {
  return step_dir.parent_path() / fmt::format(".{}.shards", step_dir.filename().string());
}

ShardFileRecord shard_file_record(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot read", file.string()));
  ShardFileRecord r;
  r.file = file.filename().string();
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    r.crc32 = plot::crc32(reinterpret_cast<const uint8_t*>(buf.data()), n, r.crc32);
    r.bytes += static_cast<int64_t>(n);
  }
  if (in.bad()) throw InputError(fmt::format("{}: read error", file.string()));
  return r;
}

nlohmann::json optimizer_manifest(const FlatParameterLayout& layout, ShardLevel level, int64_t step,
                                  const std::vector<ShardFileRecord>& files) {
  nlohmann::json fl = nlohmann::json::array();
  for (std::size_t r = 0; r < files.size(); ++r)
    fl.push_back({{"rank", r}, {"file", files[r].file}, {"bytes", files[r].bytes}, {"crc32", files[r].crc32}});
  return {{"format", "minipuzzle-sharded-optimizer"},
          {"world_size", layout.world_size},
          {"shard", shard_level_name(level)},
          {"step", step},
          {"layout", layout.to_json()},
          {"files", fl}};
}

nlohmann::json read_optimizer_manifest(const fs::path& dir, const FlatParameterLayout& layout, ShardLevel level) {
  const fs::path file = dir / kOptimizerManifest;
  if (!fs::exists(file))
    throw InputError(fmt::format("{}: missing (the checkpoint holds no sharded optimizer state; resume with the "
                                 "--shard level it was written with)",
                                 file.string()));
  const nlohmann::json m = parse_json_read_back(read_file(file));
  if (!m.is_object() || m.value("format", "") != "minipuzzle-sharded-optimizer" || !m.contains("files") ||
      !m["files"].is_array())
    throw InputError(fmt::format("{}: not a sharded optimizer manifest", file.string()));
  if (m.value("shard", "") != shard_level_name(level))
    throw InputError(fmt::format("{}: written with --shard {}, this run uses --shard {}", file.string(),
                                 m.value("shard", "?"), shard_level_name(level)));
  const std::string diff = layout.difference(m.value("layout", nlohmann::json()));
  if (!diff.empty())
    throw InputError(fmt::format("{}: the flat layout is of another model ({})", file.string(), diff));
  const int world = m["layout"].value("world_size", 0);
  if (m.value("world_size", -1) != world || m["files"].size() != static_cast<std::size_t>(world))
    throw InputError(fmt::format("{}: lists {} shard files for {} ranks", file.string(), m["files"].size(), world));
  return m;
}

std::vector<int> optimizer_shards_over(const nlohmann::json& manifest, int64_t lo, int64_t hi) {
  const int world = manifest["world_size"].get<int>();
  const int64_t shard = manifest["layout"]["shard"].get<int64_t>(), total = manifest["layout"]["total"].get<int64_t>();
  std::vector<int> out;
  for (int q = 0; q < world; ++q)
    if (std::max(lo, shard * q) < std::min({hi, shard * (q + 1), total})) out.push_back(q);
  return out;
}

std::string check_optimizer_shard(const fs::path& dir, const nlohmann::json& manifest, int rank) {
  const auto& e = manifest["files"][static_cast<std::size_t>(rank)];
  if (!e.is_object() || !e.contains("file") || !e["file"].is_string() || !e.contains("bytes") ||
      !e.contains("crc32"))
    return fmt::format("{}: bad entry for rank {}", (dir / kOptimizerManifest).string(), rank);
  const fs::path file = dir / e["file"].get<std::string>();
  std::error_code ec;
  if (!fs::exists(file, ec)) return fmt::format("{}: optimizer shard of rank {} is missing", file.string(), rank);
  try {
    const ShardFileRecord r = shard_file_record(file);
    if (r.bytes != e["bytes"].get<int64_t>())
      return fmt::format("{}: {} bytes, the manifest says {} (truncated?)", file.string(), r.bytes,
                         e["bytes"].get<int64_t>());
    if (r.crc32 != e["crc32"].get<uint32_t>())
      return fmt::format("{}: checksum differs from the manifest's (corrupt)", file.string());
  } catch (const InputError& err) {
    return err.what();
  }
  return "";
}

}  // namespace minipuzzle
