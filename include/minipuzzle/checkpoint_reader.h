// The tensors of a checkpoint's weight files by Hub name, read one at a time
// straight from the mmap'd files into the dtype and device the caller wants.
//
// Every path that reads weights goes through it: load_model (the whole model,
// tensor by tensor into its final dtype and device), streamed residency (a
// block's tensors while the block runs), and prune and export (row chunks of
// one tensor at a time). So a load never stages the model in another dtype,
// and what a tensor reads as is defined once (FP8 weights are dequantized in
// fp32 with their `weight_scale_inv`, then converted; compressed-tensors
// weights, fp8 / nvfp4 / int4 of `export`, read as the W' compressed-tensors
// decompresses them to, see weight_quantization.h).
//
// After a tensor is read its file pages are dropped from the process
// (release_pages), and every read first checks that the file has not shrunk
// since it was opened (a truncated shard is an InputError naming the file,
// never a SIGBUS).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "minipuzzle/safetensors.h"
#include "minipuzzle/weight_quantization.h"

namespace minipuzzle {

class CheckpointReader {
 public:
  // `source` names the checkpoint in messages (its directory).
  CheckpointReader(CheckpointFiles files, std::string source);
  static CheckpointReader open(const std::filesystem::path& dir);

  const std::string& source() const { return source_; }
  bool contains(const std::string& hub_name) const {
    return by_hub_.count(hub_name) > 0 || compressed_format(hub_name).has_value();
  }
  // InputError naming the tensor when it is absent, of another shape, or of
  // a dtype that is not a float (F8_E4M3 needs its scale).
  void check(const std::string& hub_name, const std::vector<int64_t>& shape) const;

  // The whole tensor in `dtype` on `device` (fresh memory, never a view of
  // the file). CPU conversions go straight from the mapped bytes.
  torch::Tensor read(const std::string& hub_name, torch::ScalarType dtype, torch::Device device = torch::kCPU) const;
  // A CPU read (read, read_into) of a plain tensor over twice this many bytes copies it a
  // piece of rows of this size at a time, releasing each piece's file pages
  // as it goes (64 MiB; smaller in tests, to take that path on small files).
  void set_read_piece_bytes(int64_t bytes) { piece_bytes_ = std::max<int64_t>(bytes, 1); }
  // Into an existing tensor of the right shape (its dtype and device).
  void read_into(const std::string& hub_name, torch::Tensor& out) const;
  // Rows [first, first + count) of dim 0 as a CPU tensor in `dtype`, reading
  // only those rows' bytes (FP8: those rows times their scales).
  torch::Tensor read_rows(const std::string& hub_name, int64_t first, int64_t count, torch::ScalarType dtype) const;
  // Rows `rows` of dim 0 (any order), reading only those rows.
  torch::Tensor read_rows(const std::string& hub_name, const torch::Tensor& rows, torch::ScalarType dtype) const;

  // The file pages of a tensor (and its FP8 scale) leave the process.
  void release(const std::string& hub_name) const;

  // InputError for a tensor in the files that is neither in `used` nor an
  // FP8 scale of one, nor a multi-token-prediction head (`mtp.*`, not part of
  // the language model).
  void check_no_extra(const std::set<std::string>& used) const;

  // Bytes of the weight files' tensors.
  uint64_t total_bytes() const;

 private:
  const CheckpointFiles::Entry& entry(const std::string& hub_name) const;
  // The compressed-tensors format `hub_name` ("X.weight") is stored in, if any.
  std::optional<WeightFormat> compressed_format(const std::string& hub_name) const;
  const CheckpointFiles::Entry& part(const std::string& hub_name, const std::string& suffix) const;
  void check_compressed(const std::string& hub_name, WeightFormat f, const std::vector<int64_t>& shape) const;
  // The CPU tensor over the mapped bytes, or its `rows` when defined (fp8:
  // dequantized to fp32).
  torch::Tensor source_tensor(const std::string& hub_name, const torch::Tensor& rows) const;
  // `src` (the mapped tensor) into `out` piece by piece when it is large and
  // plain and `out` is on the CPU; false (nothing done) otherwise.
  bool copy_in_pieces(const std::string& hub_name, const torch::Tensor& src, torch::Tensor& out) const;
  bool in_pieces(const std::string& hub_name, const torch::Tensor& src, const torch::Device& to) const;

  CheckpointFiles files_;
  std::string source_;
  std::map<std::string, const CheckpointFiles::Entry*> by_hub_;
  int64_t piece_bytes_ = int64_t{64} << 20;
};

}  // namespace minipuzzle
