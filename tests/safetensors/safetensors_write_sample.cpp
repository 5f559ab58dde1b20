// Test helper for the Python oracle test (test_python_reads_ours.py).
//   safetensors_write_sample write DIR  : DIR/all_dtypes.safetensors (tensor
//       "<dtype lower-case>" of shape [2,3] per dtype, values below) and a
//       sharded checkpoint in DIR/sharded/.
//   safetensors_write_sample dump PATH  : a file or checkpoint dir as JSON
//       {"metadata": {...}, "tensors": {name: {dtype, shape, fnv1a64}}}.
// Values: element i (0..5) is i-2 for signed ints, i for unsigned, i%2 for
// BOOL, (i-2)/2 for floats (exact in every float format, F8 included).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "minipuzzle/errors.h"
#include "minipuzzle/safetensors.h"

using namespace minipuzzle;
namespace fs = std::filesystem;

namespace {

// Bits of an exactly representable normal value (or zero) in a small float
// format with the usual IEEE layout and bias 2^(ebits-1)-1.
uint32_t encode_float(double v, int ebits, int mbits) {
  uint32_t sign = v < 0 ? 1u : 0u;
  uint32_t body = 0;
  if (v != 0) {
    int e;
    double m = std::frexp(std::fabs(v), &e);  // |v| = m * 2^e, m in [0.5, 1)
    uint32_t exponent = uint32_t(e - 1 + (1 << (ebits - 1)) - 1);
    uint32_t mantissa = uint32_t(std::ldexp(2 * m - 1, mbits));
    body = (exponent << mbits) | mantissa;
  }
  return (sign << (ebits + mbits)) | body;
}

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian hosts only, like the format
  out.insert(out.end(), b, b + sizeof(T));
}

std::vector<uint8_t> sample_bytes(DType dt) {
  std::vector<uint8_t> out;
  for (int i = 0; i < 6; ++i) {
    const double f = (i - 2) / 2.0;
    switch (dt) {
      case DType::BOOL: put<uint8_t>(out, i % 2); break;
      case DType::U8: put<uint8_t>(out, i); break;
      case DType::I8: put<int8_t>(out, i - 2); break;
      case DType::I16: put<int16_t>(out, i - 2); break;
      case DType::U16: put<uint16_t>(out, i); break;
      case DType::I32: put<int32_t>(out, i - 2); break;
      case DType::U32: put<uint32_t>(out, i); break;
      case DType::I64: put<int64_t>(out, i - 2); break;
      case DType::U64: put<uint64_t>(out, i); break;
      case DType::F16: put<uint16_t>(out, encode_float(f, 5, 10)); break;
      case DType::BF16: put<uint16_t>(out, encode_float(f, 8, 7)); break;
      case DType::F32: put<float>(out, float(f)); break;
      case DType::F64: put<double>(out, f); break;
      case DType::F8_E4M3: put<uint8_t>(out, encode_float(f, 4, 3)); break;
      case DType::F8_E5M2: put<uint8_t>(out, encode_float(f, 5, 2)); break;
    }
  }
  return out;
}

const DType kAll[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16,     DType::U16,
                      DType::F16,  DType::BF16, DType::I32, DType::U32,    DType::F32,
                      DType::F64,  DType::I64, DType::U64, DType::F8_E4M3, DType::F8_E5M2};

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void write_samples(const fs::path& dir) {
  std::vector<std::vector<uint8_t>> bytes;
  for (DType dt : kAll) bytes.push_back(sample_bytes(dt));
  std::vector<TensorView> views;
  for (std::size_t i = 0; i < std::size(kAll); ++i)
    views.push_back({lower(dtype_name(kAll[i])), kAll[i], {2, 3}, bytes[i].data(), bytes[i].size()});
  write_safetensors(dir / "all_dtypes.safetensors", views);

  // Sharded: 12 F32 tensors of 6 elements (24 bytes), at most 100 bytes a shard.
  fs::create_directories(dir / "sharded");
  const auto f32 = sample_bytes(DType::F32);
  std::vector<TensorView> layers;
  for (int i = 0; i < 12; ++i)
    layers.push_back({"layers." + std::to_string(10 + i) + ".weight", DType::F32, {2, 3},
                      f32.data(), f32.size()});
  write_checkpoint_weights(dir / "sharded", layers, 100);
}

std::string fnv1a64(const uint8_t* p, std::size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

nlohmann::json describe(const SafetensorsFile& f, const TensorInfo& t) {
  return {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape},
          {"fnv1a64", fnv1a64(f.data(t), t.nbytes())}};
}

void dump(const fs::path& path) {
  nlohmann::json out = {{"metadata", nlohmann::json::object()},
                        {"tensors", nlohmann::json::object()}};
  if (fs::is_directory(path)) {
    auto ckpt = CheckpointFiles::open(path);
    for (const auto& name : ckpt.names()) {
      const auto* e = ckpt.find(name);
      out["tensors"][name] = describe(*e->file, *e->info);
    }
  } else {
    auto f = SafetensorsFile::open(path);
    out["metadata"] = f->metadata();
    for (const auto& t : f->tensors()) out["tensors"][t.name] = describe(*f, t);
  }
  std::cout << out.dump() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::strcmp(argv[1], "write") != 0 && std::strcmp(argv[1], "dump") != 0)) {
    std::cerr << "usage: safetensors_write_sample write DIR | dump FILE_OR_DIR\n";
    return 2;
  }
  try {
    if (std::strcmp(argv[1], "write") == 0)
      write_samples(argv[2]);
    else
      dump(argv[2]);
  } catch (const InputError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
