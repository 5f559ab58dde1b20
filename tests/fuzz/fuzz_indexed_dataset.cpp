// Megatron .idx (src/indexed_dataset.cpp): the input is PREFIX.idx; PREFIX.bin
// is a fixed 64 KiB file (written once), so an index may fit it or run past
// it. An accepted dataset is then read whole, sequence by sequence and flat.
#include <vector>

#include "fuzz_common.h"
#include "minipuzzle/indexed_dataset.h"

namespace minipuzzle::fuzz {

namespace {

constexpr std::size_t kBinBytes = 64 * 1024;

std::string prefix() {
  static const std::string p = [] {
    const std::string pre = (scratch_dir() / "ds").string();
    std::string bin(kBinBytes, '\0');
    for (std::size_t i = 0; i < bin.size(); ++i) bin[i] = static_cast<char>(i * 31 + 7);
    write_bytes(pre + ".bin", bin);
    return pre;
  }();
  return p;
}

}  // namespace

void indexed_dataset(const uint8_t* data, std::size_t size) {
  const std::string pre = prefix();
  write_bytes(pre + ".idx", data, size);
  auto ds = IndexedDataset::open(pre);

  const auto& docs = ds->document_index();
  if (docs.empty() || docs.front() != 0 || docs.back() != static_cast<int64_t>(ds->num_sequences()))
    finding("accepted document index does not run from 0 to the sequence count");
  uint64_t total = 0;
  for (std::size_t s = 0; s < ds->num_sequences(); ++s) {
    if (ds->length(s) < 0) finding("accepted a negative sequence length");
    total += static_cast<uint64_t>(ds->length(s));
  }
  if (total != ds->total_tokens()) finding("total_tokens() differs from the sum of the lengths");
  if (total * token_dtype_size(ds->dtype()) > kBinBytes) finding("accepted an index that runs past the .bin");

  // Float dtypes are accepted by open() and refused (InputError) by read().
  std::vector<int64_t> flat(total);
  if (total) ds->read_flat(0, static_cast<int64_t>(total), flat.data());
  std::size_t at = 0;
  for (std::size_t s = 0; s < ds->num_sequences(); ++s) {
    const std::vector<int64_t> seq = ds->read(s);
    for (int64_t v : seq)
      if (v != flat[at++]) finding("read() and read_flat() disagree");
  }
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::indexed_dataset)
