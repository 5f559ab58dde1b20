// Token windows of a dataset as LibTorch batches.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "minipuzzle/indexed_dataset.h"

namespace minipuzzle {

// Rows [start, start + seq_len + 1) of the flat token stream, as int64
// [n, seq_len + 1]. InputError naming the dataset when a token id is
// negative or >= vocab_size.
torch::Tensor gather_windows(const IndexedDataset& data, const std::vector<uint64_t>& starts, int64_t seq_len,
                             int64_t vocab_size);

// InputError when any id is outside [0, vocab_size); `what` names the source.
void check_token_range(const torch::Tensor& tokens, int64_t vocab_size, const std::string& what);

}  // namespace minipuzzle
