#include "minipuzzle/weight_quantization.h"

#include <cmath>
#include <stdexcept>

namespace minipuzzle {

namespace {

constexpr double kFp8Max = 448.0;
constexpr double kFp4Max = 6.0;
constexpr double kFp8SmallestSubnormal = 1.0 / 512.0;  // 2^-9
constexpr double kInt4HalfRange = 7.5;                 // (7 - (-8)) / 2, compressed-tensors' symmetric range

// Low nibble = even element, high nibble = odd element (both formats).
torch::Tensor pack_nibbles(const torch::Tensor& codes) {
  auto pairs = codes.to(torch::kUInt8).reshape({codes.size(0), codes.size(1) / 2, 2});
  return torch::bitwise_or(pairs.select(2, 0), torch::bitwise_left_shift(pairs.select(2, 1), 4)).contiguous();
}

torch::Tensor unpack_nibbles(const torch::Tensor& bytes) {
  auto low = torch::bitwise_and(bytes, 0x0F);
  auto high = torch::bitwise_right_shift(bytes, 4);
  return torch::stack({low, high}, 2).reshape({bytes.size(0), bytes.size(1) * 2});
}

void check_rows(WeightFormat f, const torch::Tensor& rows) {
  if (rows.dim() != 2) throw std::invalid_argument("quantize_rows: expected a 2-D tensor");
  if (rows.size(1) % weight_format_group(f) != 0)
    throw std::invalid_argument("quantize_rows: " + std::to_string(rows.size(1)) + " columns are not a multiple of " +
                                std::to_string(weight_format_group(f)));
  if (!torch::isfinite(rows).all().item<bool>())
    throw std::invalid_argument("quantize_rows: the tensor holds non-finite values");
}

}  // namespace

torch::Tensor fp4_e2m1_codes(const torch::Tensor& x) {
  // Grid 0, .5, 1, 1.5, 2, 3, 4, 6 (codes 0..7); ties go to the even code,
  // hence the alternating > / >= at the midpoints.
  auto a = x.abs();
  auto idx = (a > 0.25).to(torch::kUInt8) + (a >= 0.75).to(torch::kUInt8) + (a > 1.25).to(torch::kUInt8) +
             (a >= 1.75).to(torch::kUInt8) + (a > 2.5).to(torch::kUInt8) + (a >= 3.5).to(torch::kUInt8) +
             (a > 5.0).to(torch::kUInt8);
  auto sign = torch::logical_and(x < 0, idx > 0).to(torch::kUInt8) * 8;
  return torch::bitwise_or(idx, sign);
}

torch::Tensor fp4_e2m1_values(const torch::Tensor& codes) {
  static const float grid[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  auto table = torch::from_blob(const_cast<float*>(grid), {8}, torch::kFloat32).to(codes.device());
  auto mag = table.index({torch::bitwise_and(codes, 7).to(torch::kLong)});
  return torch::where(torch::bitwise_and(codes, 8) != 0, -mag, mag);
}

torch::Tensor nvfp4_global_scale(double tensor_absmax) {
  const float absmax = static_cast<float>(tensor_absmax);
  float gs = absmax > 0 ? static_cast<float>(kFp8Max * kFp4Max) / absmax : 1.f;
  if (!std::isfinite(gs)) gs = 1.f;
  return torch::full({1}, gs, torch::kFloat32);
}

QuantizedRows quantize_rows(WeightFormat f, const torch::Tensor& rows_in, const torch::Tensor& global_scale) {
  torch::NoGradGuard no_grad;
  check_rows(f, rows_in);
  const torch::Tensor w = rows_in.to(torch::kFloat32).contiguous();
  const int64_t n = w.size(0), cols = w.size(1);
  QuantizedRows out;
  switch (f) {
    case WeightFormat::kFp8Channel: {
      auto amax = w.abs().amax(1, true);
      auto scale = (amax / kFp8Max).to(torch::kBFloat16);
      scale = torch::where(scale == 0, torch::ones_like(scale), scale);
      out.values = (w / scale.to(torch::kFloat32)).clamp(-kFp8Max, kFp8Max).to(torch::kFloat8_e4m3fn);
      out.scale = scale;
      break;
    }
    case WeightFormat::kNvfp4: {
      if (!global_scale.defined()) throw std::invalid_argument("quantize_rows: nvfp4 needs the global scale");
      auto groups = w.reshape({n, cols / 16, 16});
      auto gs = global_scale.to(torch::kFloat32).reshape({1});
      auto s = (groups.abs().amax(2) / kFp4Max * gs).clamp_max(kFp8Max).to(torch::kFloat8_e4m3fn);
      s = torch::where(s.to(torch::kFloat32) == 0,
                       torch::full({}, kFp8SmallestSubnormal, torch::kFloat32).to(torch::kFloat8_e4m3fn), s);
      auto effective = (s.to(torch::kFloat32) / gs).unsqueeze(2);
      auto codes = fp4_e2m1_codes((groups / effective).clamp(-kFp4Max, kFp4Max)).reshape({n, cols});
      out.values = pack_nibbles(codes);
      out.scale = s.contiguous();
      break;
    }
    case WeightFormat::kInt4Group128: {
      auto groups = w.reshape({n, cols / 128, 128});
      auto s = (groups.abs().amax(2) / kInt4HalfRange).to(torch::kBFloat16);
      s = torch::where(s == 0, torch::full({}, std::ldexp(1.0, -7), torch::kBFloat16), s);
      auto q = torch::round(groups / s.to(torch::kFloat32).unsqueeze(2)).clamp(-8, 7).reshape({n, cols});
      out.values = pack_nibbles((q + 8).to(torch::kUInt8)).view(torch::kInt32);
      out.scale = s.contiguous();
      break;
    }
  }
  out.dequantized = dequantize_rows(f, out.values, out.scale, global_scale);
  return out;
}

torch::Tensor dequantize_rows(WeightFormat f, const torch::Tensor& values, const torch::Tensor& scale,
                              const torch::Tensor& global_scale) {
  torch::NoGradGuard no_grad;
  switch (f) {
    case WeightFormat::kFp8Channel:
      return values.to(torch::kBFloat16) * scale.to(torch::kBFloat16);
    case WeightFormat::kNvfp4: {
      auto q = fp4_e2m1_values(unpack_nibbles(values));
      const int64_t n = q.size(0), cols = q.size(1);
      // compressed-tensors divides the bf16 group scale by the fp32 global
      // scale (fp32 result) and multiplies in fp32, rounding once to bf16.
      auto effective = scale.to(torch::kBFloat16) / global_scale.to(torch::kFloat32).reshape({1});
      return (q.reshape({n, cols / 16, 16}) * effective.unsqueeze(2)).reshape({n, cols}).to(torch::kBFloat16);
    }
    case WeightFormat::kInt4Group128: {
      auto codes = unpack_nibbles(values.contiguous().view(torch::kUInt8)).to(torch::kInt16) - 8;
      const int64_t n = codes.size(0), cols = codes.size(1);
      auto q = codes.to(torch::kBFloat16).reshape({n, cols / 128, 128});
      return (q * scale.to(torch::kBFloat16).unsqueeze(2)).reshape({n, cols});
    }
  }
  throw std::invalid_argument("dequantize_rows: unknown format");
}

}  // namespace minipuzzle
