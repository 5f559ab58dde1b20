// Weight-only quantization in the compressed-tensors formats that vLLM and
// transformers read (config.json "quantization_config": {"quant_method":
// "compressed-tensors", ...}). A weight W [rows, cols] of module X becomes:
//
//   fp8   ("float-quantized", W8A16 FP8, strategy channel):
//           X.weight        F8_E4M3 [rows, cols]
//           X.weight_scale  BF16    [rows, 1]
//         scale = bf16(rowmax|W| / 448); q = RNE(clamp(W / scale, +-448));
//         W' = bf16(bf16(q) * scale).
//   nvfp4 ("nvfp4-pack-quantized", NVFP4A16, strategy tensor_group, group 16):
//           X.weight_global_scale F32     [1]
//           X.weight_packed       U8      [rows, cols / 2]
//           X.weight_scale        F8_E4M3 [rows, cols / 16]
//         gs = 448 * 6 / max|W| (the global scale is the *inverse*: it maps
//         the tensor's max to FP8 max x FP4 max); s = fp8(min(gmax/6 * gs, 448))
//         per group of 16 (a zero s becomes the smallest FP8 subnormal so
//         no division by zero); q = E2M1 RNE(clamp(W / (s / gs), +-6)), its
//         4-bit code (sign bit 3, magnitude index 0..7 of
//         {0, .5, 1, 1.5, 2, 3, 4, 6}); element 2k in the low nibble of byte
//         k, 2k+1 in the high nibble. W' = bf16(q * (float(s) / gs)).
//   int4  ("pack-quantized", W4A16 symmetric, strategy group, group 128):
//           X.weight_packed I32   [rows, cols / 8]
//           X.weight_scale  BF16  [rows, cols / 128]
//           X.weight_shape  I64   [2] = {rows, cols}
//         s = bf16(gmax / 7.5) (0 -> bf16 eps); q = clamp(RNE(W / s), -8, 7);
//         q + 8 packed 8 per int32, element i at bits 4i of the little-endian
//         word (the same nibble order as nvfp4). W' = bf16(bf16(q) * s).
//
// W' is what compressed-tensors' decompressors compute from those tensors,
// operation for operation (the oracle test checks bit equality), so a bf16
// checkpoint of W' (`export --dequantized`) is the model a serving engine runs.
//
// All three are row-local (scales along dim 1), so a tensor is quantized a
// row chunk at a time; nvfp4 needs the tensor's max first (one extra pass).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/dtype.h"
#include "minipuzzle/weight_format.h"  // the formats, their tensors and which weights they convert

namespace minipuzzle {

// A row chunk quantized: `values` is the stored weight (fp8 [n, cols],
// uint8 [n, cols/2] for nvfp4, int32 [n, cols/8] for int4), `scale` the
// stored scales of those rows, `dequantized` W' of those rows (bf16).
struct QuantizedRows {
  torch::Tensor values;
  torch::Tensor scale;
  torch::Tensor dequantized;
};

// nvfp4's per-tensor global scale from the tensor's max |W| (fp32 [1]).
torch::Tensor nvfp4_global_scale(double tensor_absmax);

// Quantizes rows [n, cols] (any float dtype; computed in fp32). `global_scale`
// is required for nvfp4 and ignored otherwise. std::invalid_argument when
// cols is not a multiple of the group or the rows hold non-finite values.
QuantizedRows quantize_rows(WeightFormat f, const torch::Tensor& rows,
                            const torch::Tensor& global_scale = {});

// W' from stored tensors (the decompression; bf16 [n, cols]).
torch::Tensor dequantize_rows(WeightFormat f, const torch::Tensor& values, const torch::Tensor& scale,
                              const torch::Tensor& global_scale = {});

// E2M1 helpers (exposed for the tests): RNE of fp32 values already in
// [-6, 6] to 4-bit codes (uint8), and back to fp32.
torch::Tensor fp4_e2m1_codes(const torch::Tensor& x);
torch::Tensor fp4_e2m1_values(const torch::Tensor& codes);

}  // namespace minipuzzle
