#include "minipuzzle/tensor_bridge.h"

#include <cstdint>

#include "minipuzzle/errors.h"

namespace minipuzzle {

torch::ScalarType to_torch_dtype(DType t) {
  switch (t) {
    case DType::BOOL: return torch::kBool;
    case DType::U8: return torch::kUInt8;
    case DType::I8: return torch::kInt8;
    case DType::I16: return torch::kInt16;
    case DType::U16: return torch::kUInt16;
    case DType::F16: return torch::kFloat16;
    case DType::BF16: return torch::kBFloat16;
    case DType::I32: return torch::kInt32;
    case DType::U32: return torch::kUInt32;
    case DType::F32: return torch::kFloat32;
    case DType::F64: return torch::kFloat64;
    case DType::I64: return torch::kInt64;
    case DType::U64: return torch::kUInt64;
    case DType::F8_E4M3: return torch::kFloat8_e4m3fn;
    case DType::F8_E5M2: return torch::kFloat8_e5m2;
  }
  throw InputError("unsupported dtype");
}

DType from_torch_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kBool: return DType::BOOL;
    case torch::kUInt8: return DType::U8;
    case torch::kInt8: return DType::I8;
    case torch::kInt16: return DType::I16;
    case torch::kUInt16: return DType::U16;
    case torch::kFloat16: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    case torch::kInt32: return DType::I32;
    case torch::kUInt32: return DType::U32;
    case torch::kFloat32: return DType::F32;
    case torch::kFloat64: return DType::F64;
    case torch::kInt64: return DType::I64;
    case torch::kUInt64: return DType::U64;
    case torch::kFloat8_e4m3fn: return DType::F8_E4M3;
    case torch::kFloat8_e5m2: return DType::F8_E5M2;
    default: break;
  }
  throw std::invalid_argument(std::string("no safetensors dtype for torch ") + c10::toString(t));
}

torch::Tensor tensor_view(const std::shared_ptr<SafetensorsFile>& file, const TensorInfo& info) {
  auto dtype = to_torch_dtype(info.dtype);
  const uint8_t* ptr = file->data(info);
  auto opts = torch::TensorOptions().dtype(dtype);
  if (info.nbytes() == 0) return torch::empty(info.shape, opts);
  if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(info.dtype) == 0) {
    auto keep = file;  // the deleter holds the mapping alive
    return torch::from_blob(const_cast<uint8_t*>(ptr), info.shape, [keep](void*) {}, opts);
  }
  // safetensors does not promise alignment; unaligned data gets one copy.
  auto t = torch::empty(info.shape, opts);
  std::memcpy(t.data_ptr(), ptr, info.nbytes());
  return t;
}

}  // namespace minipuzzle
