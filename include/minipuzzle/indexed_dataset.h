// Megatron indexed datasets (`PREFIX.bin` + `PREFIX.idx`), as written by
// Megatron-LM's megatron/core/datasets/indexed_dataset.py.
//
// .idx layout (little-endian): 9 bytes magic "MMIDIDX\0\0", uint64 version (1),
// uint8 dtype code (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16;
// Megatron's codes, note f64 before f32), uint64 sequence count S, uint64
// document-index count D+1 (the number of entries of the array, not of
// documents), then int32 lengths[S], int64 byte pointers[S] into .bin
// (contiguous: pointer[i+1] = pointer[i] + lengths[i] * dtype size), int64
// document indices[D+1] (sequence index where each document starts, first 0,
// last S). Multimodal Megatron files append int8 modes[S]; the reader accepts
// and ignores them. Arrays are unaligned in the file: read them by copying,
// never by casting.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace minipuzzle {

enum class TokenDType : uint8_t { U8 = 1, I8 = 2, I16 = 3, I32 = 4, I64 = 5, F64 = 6, F32 = 7, U16 = 8 };
// "uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16" (numpy names).
const char* token_dtype_name(TokenDType t);
// Inverse of token_dtype_name for the integer dtypes; InputError otherwise.
TokenDType token_dtype_from_name(const std::string& name);
std::size_t token_dtype_size(TokenDType t);

class IndexedDataset {
 public:
  // Opens and validates PREFIX.idx/.bin (InputError naming the file and rule).
  static std::shared_ptr<IndexedDataset> open(const std::string& prefix);
  ~IndexedDataset();

  const std::string& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  std::size_t num_sequences() const { return lengths_.size(); }
  std::size_t num_documents() const { return doc_idx_.empty() ? 0 : doc_idx_.size() - 1; }
  int64_t length(std::size_t seq) const { return lengths_.at(seq); }
  const std::vector<int64_t>& document_index() const { return doc_idx_; }
  uint64_t total_tokens() const { return total_tokens_; }

  // Tokens [offset, offset+count) of sequence `seq`, widened to int64.
  void read(std::size_t seq, int64_t offset, int64_t count, int64_t* out) const;
  std::vector<int64_t> read(std::size_t seq) const;
  // Tokens [start, start+count) of the concatenation of all sequences.
  void read_flat(uint64_t start, int64_t count, int64_t* out) const;

 private:
  IndexedDataset() = default;
  std::string prefix_;
  TokenDType dtype_ = TokenDType::U16;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> pointers_;
  std::vector<int64_t> doc_idx_;
  std::vector<uint64_t> flat_starts_;  // token offset of each sequence in the flat stream
  uint64_t total_tokens_ = 0;
  const uint8_t* bin_ = nullptr;
  std::size_t bin_size_ = 0;
  void* bin_mapping_ = nullptr;
};

// Writes a dataset: add documents (each one sequence), then finish(), which
// writes .bin and .idx atomically (.idx last). Tokens must fit the dtype.
class IndexedDatasetBuilder {
 public:
  IndexedDatasetBuilder(std::string prefix, TokenDType dtype);
  ~IndexedDatasetBuilder();
  void add_document(const std::vector<int64_t>& tokens);
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minipuzzle
