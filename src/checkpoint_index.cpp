// The weight files of a checkpoint directory, sharded or not, cross-checked
// against the index so a tensor is never silently missing or read twice.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace detail {
// Defined in safetensors_reader.cpp: JSON parse that rejects repeated keys.
nlohmann::json parse_json_strict(std::string_view text, const std::string& source,
                                 const std::string& what);
}  // namespace detail

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

[[noreturn]] void fail(const std::string& source, const std::string& rule) {
  throw InputError(source + ": " + rule);
}

// A shard name from the index must stay inside the checkpoint directory.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find("..") == std::string::npos &&
         !fs::path(name).is_absolute();
}

}  // namespace

CheckpointFiles CheckpointFiles::open(const fs::path& dir) {
  const std::string where = dir.string();
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail(where, "checkpoint directory does not exist");
  if (!fs::is_directory(dir, ec)) fail(where, "is not a directory");

  CheckpointFiles out;
  const fs::path index_path = dir / kIndexName;
  if (fs::exists(index_path, ec)) {
    const std::string source = index_path.string();
    auto index = detail::parse_json_strict(read_file(index_path), source, "index");
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail(source, "has no \"weight_map\" object");

    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    std::map<std::string, std::string> shard_of;  // tensor -> shard name
    for (const auto& [name, value] : index["weight_map"].items()) {
      if (!value.is_string())
        fail(source, fmt::format("weight_map[\"{}\"] is not a file name string", name));
      const auto shard = value.get<std::string>();
      if (!is_plain_file_name(shard))
        fail(source, fmt::format("weight_map[\"{}\"] = \"{}\" is not a file name inside the "
                                 "checkpoint directory", name, shard));
      if (!shards.count(shard)) {
        if (!fs::is_regular_file(dir / shard, ec))
          fail(source, fmt::format("shard \"{}\" (holding \"{}\") does not exist", shard, name));
        shards[shard] = SafetensorsFile::open(dir / shard);
        out.files_.push_back(shards[shard]);
      }
      const auto& file = shards[shard];
      const TensorInfo* info = file->find(name);
      if (!info) fail(source, fmt::format("tensor \"{}\" is not in its shard \"{}\"", name, shard));
      shard_of[name] = shard;
      out.entries_[name] = Entry{file, info};
    }
    for (const auto& [shard, file] : shards) {
      for (const auto& t : file->tensors()) {
        auto it = shard_of.find(t.name);
        if (it == shard_of.end() || it->second != shard)
          fail(source, fmt::format("shard \"{}\" holds tensor \"{}\" that the weight_map does not "
                                   "assign to it", shard, t.name));
      }
    }
    return out;
  }

  fs::path single = dir / "model.safetensors";
  if (!fs::exists(single, ec)) {
    std::vector<fs::path> found;
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors")
        found.push_back(entry.path());
    if (found.empty()) fail(where, "no model.safetensors or model.safetensors.index.json");
    if (found.size() > 1)
      fail(where, fmt::format("{} .safetensors files but no model.safetensors.index.json to say "
                              "which hold the weights", found.size()));
    single = found[0];
  }
  auto file = SafetensorsFile::open(single);
  out.files_.push_back(file);
  for (const auto& t : file->tensors()) out.entries_[t.name] = Entry{file, &t};
  return out;
}

const CheckpointFiles::Entry* CheckpointFiles::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> CheckpointFiles::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

}  // namespace minipuzzle
