#include "minipuzzle/dtype.h"

#include <array>
#include <cstring>

namespace minipuzzle {
namespace {

struct DTypeRow {
  DType type;
  const char* name;  // spelling of the safetensors header
  std::size_t size;
};

// Order follows the enum so dtype_name/dtype_size can index by value.
constexpr std::array<DTypeRow, 15> kTable{{
    {DType::BOOL, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
}};

const DTypeRow& row(DType t) { return kTable[static_cast<std::size_t>(t)]; }

}  // namespace

const char* dtype_name(DType t) { return row(t).name; }

std::size_t dtype_size(DType t) { return row(t).size; }

std::optional<DType> dtype_from_name(const std::string& name) {
  for (const auto& r : kTable)
    if (name == r.name) return r.type;
  return std::nullopt;
}

}  // namespace minipuzzle
