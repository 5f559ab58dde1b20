#include "minipuzzle/byte_tokenizer.h"

namespace minipuzzle {

std::vector<int64_t> ByteTokenizer::encode_document(const std::string& text) {
  std::vector<int64_t> tokens;
  tokens.reserve(text.size() + 2);
  tokens.push_back(kBos);
  // Through unsigned char: bytes >= 0x80 must map to 131..258, not negatives.
  for (unsigned char c : text) tokens.push_back(static_cast<int64_t>(c) + kOffset);
  tokens.push_back(kEos);
  return tokens;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& tokens) {
  std::string text;
  text.reserve(tokens.size());
  for (int64_t t : tokens)
    if (t >= kOffset && t < kVocabSize) text.push_back(static_cast<char>(static_cast<unsigned char>(t - kOffset)));
  return text;
}

}  // namespace minipuzzle
