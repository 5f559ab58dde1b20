// The shard index model.safetensors.index.json (src/checkpoint_index.cpp):
// the input is the index; the checkpoint directory holds two fixed shards
// (a, b in model-00001-of-00002.safetensors; c in model-00002-of-00002)
// and a valid safetensors file just outside it, which no index may reach.
#include "fuzz_common.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle::fuzz {
namespace fs = std::filesystem;

namespace {

const fs::path& checkpoint_dir() {
  static const fs::path dir = [] {
    const fs::path d = scratch_dir() / "ckpt";
    fs::create_directories(d);
    const float a[2] = {1, 2}, b[3] = {3, 4, 5}, c[1] = {6};
    write_safetensors(d / "model-00001-of-00002.safetensors",
                      {{"a", DType::F32, {2}, a, sizeof a}, {"b", DType::F32, {3}, b, sizeof b}});
    write_safetensors(d / "model-00002-of-00002.safetensors", {{"c", DType::F32, {1}, c, sizeof c}});
    write_safetensors(scratch_dir() / "outside.safetensors", {{"x", DType::F32, {1}, c, sizeof c}});
    return d;
  }();
  return dir;
}

}  // namespace

void checkpoint_index(const uint8_t* data, std::size_t size) {
  const fs::path& dir = checkpoint_dir();
  write_bytes(dir / "model.safetensors.index.json", data, size);
  CheckpointFiles files = CheckpointFiles::open(dir);
  const fs::path canonical_dir = fs::canonical(dir);
  for (const auto& f : files.files())
    if (fs::canonical(f->path()).parent_path() != canonical_dir)
      finding("index reached a file outside the checkpoint directory: " + f->path().string());
  for (const auto& name : files.names()) {
    const auto* e = files.find(name);
    if (!e || !e->info || e->info->name != name) finding("names() lists \"" + name + "\" but find() disagrees");
    if (e->file->find(name) != e->info) finding("entry of \"" + name + "\" is not its shard's tensor");
  }
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::checkpoint_index)
