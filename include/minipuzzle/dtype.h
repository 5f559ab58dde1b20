// Element types of the safetensors format, with their on-disk names and sizes.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace minipuzzle {

enum class DType {
  BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2
};

const char* dtype_name(DType t);                                 // "BF16", "F8_E4M3", ...
std::optional<DType> dtype_from_name(const std::string& name);  // inverse; nullopt if unknown
std::size_t dtype_size(DType t);                                 // bytes per element

}  // namespace minipuzzle
