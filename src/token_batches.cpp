#include "minipuzzle/token_batches.h"

#include "minipuzzle/errors.h"

namespace minipuzzle {

void check_token_range(const torch::Tensor& tokens, int64_t vocab_size, const std::string& what) {
  if (tokens.numel() == 0) return;
  int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
  if (lo < 0) throw InputError(what + ": token id " + std::to_string(lo) + " is negative");
  if (hi >= vocab_size)
    throw InputError(what + ": token id " + std::to_string(hi) + " is >= the model's vocab_size " +
                     std::to_string(vocab_size));
}

torch::Tensor gather_windows(const IndexedDataset& data, const std::vector<uint64_t>& starts, int64_t seq_len,
                             int64_t vocab_size) {
  auto out = torch::empty({static_cast<int64_t>(starts.size()), seq_len + 1}, torch::kInt64);
  int64_t* p = out.data_ptr<int64_t>();
  for (size_t i = 0; i < starts.size(); ++i) data.read_flat(starts[i], seq_len + 1, p + i * (seq_len + 1));
  check_token_range(out, vocab_size, "dataset " + data.prefix());
  return out;
}

}  // namespace minipuzzle
