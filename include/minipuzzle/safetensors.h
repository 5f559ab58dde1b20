// safetensors files: a validating, mmap-backed reader and an atomic writer.
//
// Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the byte buffer. The reader enforces every rule of the reference
// implementation (header size limit, no duplicate keys, offsets that tile the
// buffer exactly, sizes = elements x dtype size, ...) and throws InputError
// naming the file and the rule.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "minipuzzle/dtype.h"

namespace minipuzzle {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer (after the header)
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

// An opened, validated safetensors file. The mapping lives as long as the
// object (share it to keep zero-copy tensors alive).
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  // Validates an in-memory image (used by open() and the fuzz target).
  // `bytes` must outlive the object.
  static std::shared_ptr<SafetensorsFile> from_memory(const uint8_t* bytes, std::size_t size,
                                                      const std::string& source);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in offset order
  const TensorInfo* find(const std::string& name) const;                // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Pointer to the first byte of a tensor's data (not necessarily aligned).
  const uint8_t* data(const TensorInfo& t) const { return buffer_ + t.begin; }

  // InputError naming the file when it is shorter than when it was opened
  // (truncated or rewritten in place): touching a mapped page past the new
  // end would kill the process with SIGBUS instead of reporting it. Readers
  // that stream tensors call it before each read.
  void check_intact() const;
  // Drops this process's mapping of the pages that hold only `t` (the page
  // cache keeps them; a later read faults them back in): after a tensor is
  // copied out, its file pages no longer count in the process's memory.
  void release_pages(const TensorInfo& t) const;
  // The same for bytes [from, to) of `t`'s data (whole pages inside them):
  // a large tensor copied out piece by piece gives each piece's pages back
  // as it goes, so its file pages never all count at once.
  void release_pages(const TensorInfo& t, uint64_t from, uint64_t to) const;

 private:
  SafetensorsFile() = default;
  void parse(const std::string& source);

  std::filesystem::path path_;
  const uint8_t* base_ = nullptr;  // whole file
  std::size_t size_ = 0;
  const uint8_t* buffer_ = nullptr;  // data buffer after the header
  void* mapping_ = nullptr;          // munmap on destruction when set
  int fd_ = -1;                      // kept open for check_intact()
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: bytes are copied out during the write.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::size_t nbytes = 0;
};

// Writes one file atomically: tensors sorted by name, header padded with
// spaces to a multiple of 8, `metadata` (default {"format": "pt"}).
void write_safetensors(const std::filesystem::path& path, std::vector<TensorView> tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes `model.safetensors`, or when the total exceeds `max_shard_bytes`,
// `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`
// ({"metadata": {"total_size": N}, "weight_map": {name: shard}}). Each file is
// atomic; the index is written last so a directory with an index is complete.
// Returns the file names written (index last).
std::vector<std::string> write_checkpoint_weights(const std::filesystem::path& dir,
                                                  std::vector<TensorView> tensors,
                                                  uint64_t max_shard_bytes = 5'000'000'000ULL);

// A tensor whose bytes are produced only when the writer reaches it, so a
// checkpoint larger than memory can be written one tensor at a time.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;  // elements x dtype size (std::invalid_argument on overflow)
};
// Called once per tensor, in file order; it must pass exactly the tensor's
// bytes to `write`, in any number of pieces (std::logic_error otherwise).
using WriteBytes = std::function<void(const void* data, std::size_t nbytes)>;
using TensorProducer = std::function<void(const TensorSpec& tensor, const WriteBytes& write)>;

// write_checkpoint_weights with bytes produced on demand: the same files,
// shard split, order and index, byte for byte, as writing the same tensors
// from memory. At most one tensor's bytes need exist at a time.
std::vector<std::string> write_checkpoint_weights_streamed(const std::filesystem::path& dir,
                                                           std::vector<TensorSpec> tensors,
                                                           const TensorProducer& produce,
                                                           uint64_t max_shard_bytes = 5'000'000'000ULL);

// Parses "5GB", "500MB", "1.5GiB", "1024" (bytes). Decimal units are powers
// of 1000, *iB units powers of 1024. InputError on anything else.
uint64_t parse_byte_size(const std::string& text);

// The weights of a checkpoint directory: `model.safetensors`, or the shards
// named by `model.safetensors.index.json` (shard names may not be absolute or
// contain '/', '\\' or '..'; every weight must be listed exactly once and be
// present in the shard the index names, and no shard may hold unlisted
// tensors), or, without an index, the single *.safetensors file present.
class CheckpointFiles {
 public:
  static CheckpointFiles open(const std::filesystem::path& dir);

  struct Entry {
    std::shared_ptr<SafetensorsFile> file;
    const TensorInfo* info;
  };
  const Entry* find(const std::string& name) const;  // nullptr if absent
  std::vector<std::string> names() const;              // sorted
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
};

}  // namespace minipuzzle
