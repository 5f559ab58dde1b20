// Element types the kernels read and write. Plain C++ so src/ can name them
// without CUDA headers of its own.
#pragma once

namespace minipuzzle::kernels {

enum class DType { F32, F16, BF16 };

}  // namespace minipuzzle::kernels
