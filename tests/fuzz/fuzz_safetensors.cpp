// safetensors header + offsets (src/safetensors_reader.cpp): the input is a
// whole .safetensors file. from_memory() runs the same validation as open()
// on an exactly sized buffer, so ASan sees any read past the end.
#include <cstring>

#include "fuzz_common.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle::fuzz {

void safetensors_header(const uint8_t* data, std::size_t size) {
  auto file = SafetensorsFile::from_memory(data, size, "fuzz.safetensors");
  // Use what an accepted header promises: every tensor's bytes lie inside the
  // file, tiling the buffer, and its size is elements x dtype size.
  uint64_t sum = 0, covered = 0;
  for (const TensorInfo& t : file->tensors()) {
    if (file->find(t.name) != &t) finding("find() does not return tensor \"" + t.name + "\"");
    if (t.begin != covered) finding("tensors do not tile the buffer at \"" + t.name + "\"");
    covered = t.end;
    const uint8_t* p = file->data(t);
    if (p < data || p + t.nbytes() > data + size) finding("tensor \"" + t.name + "\" lies outside the file");
    if (static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype) != t.nbytes())
      finding("tensor \"" + t.name + "\" numel x dtype size != nbytes");
    for (uint64_t i = 0; i < t.nbytes(); ++i) sum += p[i];
  }
  for (const auto& [k, v] : file->metadata()) sum += k.size() + v.size();
  volatile uint64_t sink = sum;
  (void)sink;
}

}  // namespace minipuzzle::fuzz

MINIPUZZLE_FUZZ_TARGET(minipuzzle::fuzz::safetensors_header)
