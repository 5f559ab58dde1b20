// Byte-level tokenizer for demos and tests: token = byte value (0..255) + 3,
// with 0 = pad, 1 = bos, 2 = eos, matching Nemotron-H's special ids. Vocab 259.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace minipuzzle {

struct ByteTokenizer {
  static constexpr int64_t kPad = 0, kBos = 1, kEos = 2, kOffset = 3;
  static constexpr int64_t kVocabSize = 259;
  // bos + bytes + eos
  static std::vector<int64_t> encode_document(const std::string& text);
  static std::string decode(const std::vector<int64_t>& tokens);  // drops special ids
};

}  // namespace minipuzzle
