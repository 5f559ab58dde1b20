// Between the plain-C++ file formats and LibTorch tensors.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "minipuzzle/dtype.h"
#include "minipuzzle/safetensors.h"

namespace minipuzzle {

torch::ScalarType to_torch_dtype(DType t);  // InputError for types torch lacks
DType from_torch_dtype(torch::ScalarType t);

// A read-only CPU tensor over the mapped bytes, keeping the file mapped while
// it lives (zero-copy when the data is aligned for its dtype, else a copy).
// Never write into it: the mapping is read-only.
torch::Tensor tensor_view(const std::shared_ptr<SafetensorsFile>& file, const TensorInfo& info);

}  // namespace minipuzzle
