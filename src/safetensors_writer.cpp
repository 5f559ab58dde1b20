// safetensors writer: single files and sharded checkpoints, always atomic.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "minipuzzle/atomic_file.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

// A wrong tensor description is our own bug, not the user's: std::invalid_argument.
void check_specs(const std::vector<TensorSpec>& tensors) {
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__")
      throw std::invalid_argument("write_safetensors: \"__metadata__\" is not a tensor name");
    if (!seen.insert(t.name).second)
      throw std::invalid_argument("write_safetensors: duplicate tensor name \"" + t.name + "\"");
    t.nbytes();
  }
}

void check_views(const std::vector<TensorView>& tensors) {
  for (const auto& t : tensors) {
    const uint64_t want = TensorSpec{t.name, t.dtype, t.shape}.nbytes();
    if (want != t.nbytes)
      throw std::invalid_argument(fmt::format("write_safetensors: \"{}\" has {} bytes, {} needs {}", t.name,
                                              t.nbytes, dtype_name(t.dtype), want));
    if (t.nbytes > 0 && t.data == nullptr)
      throw std::invalid_argument("write_safetensors: \"" + t.name + "\" has no data");
  }
}

void sort_by_name(std::vector<TensorSpec>& tensors) {
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
}

std::vector<TensorSpec> specs_of(const std::vector<TensorView>& views) {
  std::vector<TensorSpec> specs;
  specs.reserve(views.size());
  for (const auto& v : views) specs.push_back({v.name, v.dtype, v.shape});
  return specs;
}

// Writes the bytes of views looked up by name.
TensorProducer producer_of(const std::vector<TensorView>& views) {
  auto by_name = std::make_shared<std::map<std::string, const TensorView*>>();
  for (const auto& v : views) (*by_name)[v.name] = &v;
  return [by_name](const TensorSpec& t, const WriteBytes& write) {
    const TensorView& v = *by_name->at(t.name);
    write(v.data, v.nbytes);
  };
}

// Tensors already checked and sorted.
void write_sorted(const fs::path& path, const std::vector<TensorSpec>& tensors, const TensorProducer& produce,
                  const std::map<std::string, std::string>& metadata) {
  // Assembled by hand: __metadata__ first, then tensors in name order, in
  // linear time (ordered_json looks keys up linearly).
  std::string text = "{";
  if (!metadata.empty()) text += "\"__metadata__\":" + nlohmann::json(metadata).dump();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    nlohmann::ordered_json entry = {{"dtype", dtype_name(t.dtype)},
                                    {"shape", t.shape},
                                    {"data_offsets", {offset, offset + t.nbytes()}}};
    if (text.size() > 1) text += ',';
    text += nlohmann::json(t.name).dump() + ":" + entry.dump();
    offset += t.nbytes();
  }
  text += '}';
  // Pad so the data buffer starts 8-aligned (as the reference writer does).
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');

  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  AtomicFile out(path);
  out.write(len, sizeof len);
  out.write(text);
  for (const auto& t : tensors) {
    uint64_t written = 0;
    const uint64_t want = t.nbytes();
    produce(t, [&](const void* data, std::size_t n) {
      if (written + n > want)
        throw std::logic_error(fmt::format("write_safetensors: more than {} bytes produced for {}", want, t.name));
      out.write(data, n);
      written += n;
    });
    if (written != want)
      throw std::logic_error(fmt::format("write_safetensors: {} of {} bytes produced for {}", written, want, t.name));
  }
  out.commit();
}

bool is_weights_file(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return name.rfind("model", 0) == 0 && (ends_with(".safetensors") || name == kIndexName);
}

}  // namespace

uint64_t TensorSpec::nbytes() const {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(numel, uint64_t(d), &numel))
      throw std::invalid_argument("write_safetensors: bad shape for \"" + name + "\"");
  }
  uint64_t n;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(dtype)), &n))
    throw std::invalid_argument("write_safetensors: bad shape for \"" + name + "\"");
  return n;
}

void write_safetensors(const fs::path& path, std::vector<TensorView> tensors,
                       const std::map<std::string, std::string>& metadata) {
  auto specs = specs_of(tensors);
  check_specs(specs);
  check_views(tensors);
  sort_by_name(specs);
  write_sorted(path, specs, producer_of(tensors), metadata);
}

std::vector<std::string> write_checkpoint_weights(const fs::path& dir,
                                                  std::vector<TensorView> tensors,
                                                  uint64_t max_shard_bytes) {
  auto specs = specs_of(tensors);
  check_specs(specs);
  check_views(tensors);
  return write_checkpoint_weights_streamed(dir, std::move(specs), producer_of(tensors), max_shard_bytes);
}

std::vector<std::string> write_checkpoint_weights_streamed(const fs::path& dir, std::vector<TensorSpec> tensors,
                                                           const TensorProducer& produce,
                                                           uint64_t max_shard_bytes) {
  if (max_shard_bytes == 0) throw std::invalid_argument("write_checkpoint_weights: max_shard_bytes is 0");
  check_specs(tensors);
  sort_by_name(tensors);
  if (!fs::is_directory(dir)) throw InputError("cannot write weights: directory " + dir.string() + " does not exist");

  uint64_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();

  // Greedy in name order: a tensor larger than the limit gets a shard alone.
  std::vector<std::vector<TensorSpec>> shards(1);
  uint64_t current = 0;
  for (auto& t : tensors) {
    if (total > max_shard_bytes && !shards.back().empty() && current + t.nbytes() > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    current += t.nbytes();
    shards.back().push_back(std::move(t));
  }

  std::vector<std::string> names;
  if (total <= max_shard_bytes) {
    names.push_back("model.safetensors");
  } else {
    for (std::size_t i = 0; i < shards.size(); ++i)
      names.push_back(fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size()));
  }

  // An old index naming a file we are about to overwrite would describe a mix
  // of two writes; drop it first so the directory reads as incomplete instead.
  const fs::path index_path = dir / kIndexName;
  if (fs::exists(index_path)) {
    bool collides = std::any_of(names.begin(), names.end(),
                                [&](const std::string& n) { return fs::exists(dir / n); });
    if (collides) fs::remove(index_path);
  }

  for (std::size_t i = 0; i < names.size(); ++i)
    write_sorted(dir / names[i], shards[i], produce, {{"format", "pt"}});

  if (names.size() > 1) {
    nlohmann::json index;
    index["metadata"] = {{"total_size", total}};
    nlohmann::json weight_map = nlohmann::json::object();
    for (std::size_t i = 0; i < shards.size(); ++i)
      for (const auto& t : shards[i]) weight_map[t.name] = names[i];
    index["weight_map"] = std::move(weight_map);
    write_file_atomic(index_path, index.dump(2) + "\n");
    names.push_back(kIndexName);
  } else if (fs::exists(index_path)) {
    fs::remove(index_path);  // index first: it must never name missing shards
  }

  // Only now, with the new write complete, remove what the old one left.
  const std::set<std::string> keep(names.begin(), names.end());
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && is_weights_file(name) && !keep.count(name))
      fs::remove(entry.path());
  }
  return names;
}

uint64_t parse_byte_size(const std::string& text) {
  auto bad = [&](const std::string& why) -> InputError {
    return InputError(fmt::format("byte size \"{}\": {} (examples: 5GB, 500MB, 1.5GiB, 1024)",
                                  text, why));
  };
  std::size_t i = 0, n = text.size();
  while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  // Exact decimal arithmetic: mantissa digits / 10^frac_digits x unit.
  unsigned __int128 mantissa = 0;
  int digits = 0, frac_digits = 0;
  bool dot = false;
  for (; i < n; ++i) {
    char c = text[i];
    if (c == '.' && !dot) { dot = true; continue; }
    if (!std::isdigit(static_cast<unsigned char>(c))) break;
    if (++digits > 24) throw bad("too many digits");
    mantissa = mantissa * 10 + unsigned(c - '0');
    if (dot) ++frac_digits;
  }
  if (digits == 0) throw bad("expected a positive number");
  while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  std::string unit;
  for (; i < n; ++i) unit += char(std::tolower(static_cast<unsigned char>(text[i])));
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();

  static const std::map<std::string, uint64_t> kUnits = {
      {"", 1},           {"b", 1},
      {"kb", 1000ULL},   {"mb", 1000ULL * 1000},          {"gb", 1000ULL * 1000 * 1000},
      {"tb", 1000ULL * 1000 * 1000 * 1000},
      {"kib", 1ULL << 10}, {"mib", 1ULL << 20}, {"gib", 1ULL << 30}, {"tib", 1ULL << 40}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end()) throw bad("unknown unit \"" + unit + "\"");

  unsigned __int128 value = mantissa * it->second;  // < 10^24 x 2^40: fits in 128 bits
  unsigned __int128 scale = 1;
  for (int k = 0; k < frac_digits; ++k) scale *= 10;
  if (value % scale != 0) throw bad("not a whole number of bytes");
  value /= scale;
  if (value == 0) throw bad("must be positive");
  if (value > std::numeric_limits<uint64_t>::max()) throw bad("too large");
  return uint64_t(value);
}

}  // namespace minipuzzle
