#include "minipuzzle/memory_model.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <fmt/format.h>
#include <string>

#include "minipuzzle/errors.h"
#include "minipuzzle/weight_format.h"

namespace minipuzzle {

// fp4: which parameters are counted at the low weight precision: all of them.
// The paper's figure for the published 47B (4-bit weights, FP8 KV, bf16
// state, 1M context, batch 1) is 21.79 + 9.54 + 0.36 = 31.69 GiB:
//   weights 46,791,554,816 params * 4 bits / 8 = 23.396e9 B = 21.79 GiB,
//   KV      2 * 5 layers * 8 kv * 128 * 1e6 tokens * 1 B = 10.24e9 B = 9.54 GiB,
//   state   45 * (256*64*256 + 3*20480) * 2 B = 0.383e9 B = 0.36 GiB.
// Keeping embeddings + lm_head (2 * 131072 * 8192 = 2.15e9 params) in bf16
// would add 2.15e9 * 1.5 B = 3.0 GiB (34.7 GiB, over the 31.7 budget), so the
// paper counts every parameter, norms included (they are 0.1% of the bytes),
// at the weight precision. The 56B the same way: 26.22 + 19.07 + 0.43 = 45.73.
// nvfp4 (and fp8, int4) count what an export writes instead: embeddings and
// lm_head stay bf16 there, and the projections carry their scales.

double precision_bits(Precision p) {
  switch (p) {
    case Precision::Fp32: return 32;
    case Precision::Bf16: return 16;
    case Precision::Fp16: return 16;
    case Precision::Fp8: return 8;
    case Precision::Fp4: return 4;
    case Precision::Nvfp4: return 4.5;
    case Precision::Int4: return 4.0 + 16.0 / 128;
  }
  return 0;
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Fp32: return "fp32";
    case Precision::Bf16: return "bf16";
    case Precision::Fp16: return "fp16";
    case Precision::Fp8: return "fp8";
    case Precision::Fp4: return "fp4";
    case Precision::Nvfp4: return "nvfp4";
    case Precision::Int4: return "int4";
  }
  return "?";
}

Precision parse_precision(const std::string& text, const std::string& what) {
  std::string s;
  for (char ch : text) s.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  for (Precision p : {Precision::Fp32, Precision::Bf16, Precision::Fp16, Precision::Fp8, Precision::Fp4,
                      Precision::Nvfp4, Precision::Int4})
    if (s == precision_name(p)) return p;
  throw InputError(what + ": unknown precision '" + text + "'; expected bf16, fp16, fp32, fp8, nvfp4, int4 or fp4");
}

double parse_bytes(const std::string& text, const std::string& what) {
  const char* begin = text.c_str();
  char* end = nullptr;
  double v = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(v) || v < 0)
    throw InputError(what + ": '" + text + "' is not a size; expected e.g. 31.7GiB, 500MiB, 32GB or a byte count");
  std::string unit;
  for (const char* p = end; *p; ++p)
    if (!std::isspace(static_cast<unsigned char>(*p))) unit.push_back(static_cast<char>(std::tolower(*p)));
  struct Unit { const char* name; double scale; };
  static const Unit units[] = {{"", 1},           {"b", 1},           {"kib", 1024.0},   {"mib", 1048576.0},
                               {"gib", kGiB},     {"tib", kGiB * 1024}, {"kb", 1e3},     {"mb", 1e6},
                               {"gb", 1e9},       {"tb", 1e12}};
  for (const Unit& u : units)
    if (unit == u.name) return v * u.scale;
  throw InputError(what + ": unknown unit in '" + text + "'; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB");
}

void Deployment::validate() const {
  if (context <= 0) throw InputError("context must be a positive number of tokens, got " + std::to_string(context));
  if (batch <= 0) throw InputError("batch must be a positive number of sequences, got " + std::to_string(batch));
  if (!(workspace_bytes >= 0) || !std::isfinite(workspace_bytes))
    throw InputError("workspace must be a non-negative number of bytes");
}

int64_t mamba_layer_params(const ModelConfig& c) {
  const int64_t d = c.hidden_size, h = c.mamba_num_heads, inner = c.mamba_d_inner(), conv = c.mamba_conv_dim();
  const int64_t in_proj = d * c.mamba_in_proj_dim();
  const int64_t conv1d = conv * c.conv_kernel + (c.use_conv_bias ? conv : 0);
  const int64_t per_head = 3 * h;  // A_log, D, dt_bias
  const int64_t gated_norm = inner;
  const int64_t out_proj = inner * d;
  return d + in_proj + conv1d + per_head + gated_norm + out_proj;
}

int64_t attention_layer_params(const ModelConfig& c) {
  const int64_t d = c.hidden_size;
  return d + 2 * d * c.attention_q_dim() + 2 * d * c.attention_kv_dim();  // norm, q+o, k+v
}

int64_t mlp_layer_params(const ModelConfig& c) {
  return c.hidden_size + 2 * c.hidden_size * c.intermediate_size;  // norm, up + down
}

int64_t moe_routed_expert_params(const ModelConfig& c) {
  return c.n_routed_experts * 2 * c.moe_expert_input_dim() * c.moe_intermediate_size;  // up + down each
}

int64_t moe_layer_params(const ModelConfig& c) {
  const int64_t d = c.hidden_size;
  const int64_t router = c.n_routed_experts * d;
  const int64_t shared = 2 * d * c.moe_shared_expert_intermediate_size;
  const int64_t latent = c.moe_latent_size > 0 ? 2 * d * c.moe_latent_size : 0;
  return d + router + moe_routed_expert_params(c) + shared + latent;
}

int64_t layer_params(const ModelConfig& c, LayerType t) {
  switch (t) {
    case LayerType::Mamba: return mamba_layer_params(c);
    case LayerType::Attention: return attention_layer_params(c);
    case LayerType::Mlp: return mlp_layer_params(c);
    case LayerType::Moe: return moe_layer_params(c);
  }
  return 0;
}

ParamCounts count_parameters(const ModelConfig& c) {
  ParamCounts p;
  p.embeddings = c.vocab_size * c.hidden_size;
  p.lm_head = c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size;
  p.final_norm = c.hidden_size;
  p.per_mamba_layer = mamba_layer_params(c);
  p.per_attention_layer = attention_layer_params(c);
  p.per_mlp_layer = mlp_layer_params(c);
  p.mamba = c.count(LayerType::Mamba) * p.per_mamba_layer;
  p.attention = c.count(LayerType::Attention) * p.per_attention_layer;
  p.mlp = c.count(LayerType::Mlp) * p.per_mlp_layer;
  const int64_t moe_layers = c.count(LayerType::Moe);
  if (moe_layers > 0) {
    p.per_moe_layer = moe_layer_params(c);
    p.moe = moe_layers * p.per_moe_layer;
    p.moe_routed_experts = moe_layers * moe_routed_expert_params(c);
  }
  p.total = p.embeddings + p.lm_head + p.final_norm + p.mamba + p.attention + p.mlp + p.moe;
  p.active = p.total;
  if (moe_layers > 0)
    p.active -= p.moe_routed_experts / c.n_routed_experts * (c.n_routed_experts - c.num_experts_per_tok);
  return p;
}

int64_t mamba_ssm_state_values(const ModelConfig& c) {
  return c.mamba_num_heads * c.mamba_head_dim * c.ssm_state_size;
}

int64_t mamba_conv_state_values(const ModelConfig& c) { return (c.conv_kernel - 1) * c.mamba_conv_dim(); }

int64_t kv_values_per_token_per_layer(const ModelConfig& c) { return 2 * c.num_key_value_heads * c.head_dim; }

std::vector<ProjectionShape> projection_shapes(const ModelConfig& c) {
  const int64_t d = c.hidden_size;
  const int64_t m = c.count(LayerType::Mamba), a = c.count(LayerType::Attention), f = c.count(LayerType::Mlp),
                e = c.count(LayerType::Moe);
  std::vector<ProjectionShape> out = {
      {"mamba in_proj", c.mamba_in_proj_dim(), d, m},
      {"mamba out_proj", d, c.mamba_d_inner(), m},
      {"attention q_proj", c.attention_q_dim(), d, a},
      {"attention k_proj", c.attention_kv_dim(), d, a},
      {"attention v_proj", c.attention_kv_dim(), d, a},
      {"attention o_proj", d, c.attention_q_dim(), a},
      {"mlp up_proj", c.intermediate_size, d, f},
      {"mlp down_proj", d, c.intermediate_size, f}};
  if (e > 0) {
    const int64_t in = c.moe_expert_input_dim();
    out.push_back({"moe expert up_proj", c.moe_intermediate_size, in, e * c.n_routed_experts});
    out.push_back({"moe expert down_proj", in, c.moe_intermediate_size, e * c.n_routed_experts});
    if (c.moe_shared_expert_intermediate_size > 0) {
      out.push_back({"moe shared up_proj", c.moe_shared_expert_intermediate_size, d, e});
      out.push_back({"moe shared down_proj", d, c.moe_shared_expert_intermediate_size, e});
    }
    if (c.moe_latent_size > 0) {
      out.push_back({"moe fc1_latent_proj", c.moe_latent_size, d, e});
      out.push_back({"moe fc2_latent_proj", d, c.moe_latent_size, e});
    }
  }
  std::vector<ProjectionShape> present;
  for (auto& p : out)
    if (p.count > 0 && p.rows > 0 && p.cols > 0) present.push_back(std::move(p));
  return present;
}

double weight_bytes(const ModelConfig& c, Precision p) {
  const double total = static_cast<double>(count_parameters(c).total);
  std::optional<WeightFormat> f;
  if (p == Precision::Fp8) f = WeightFormat::kFp8Channel;
  if (p == Precision::Nvfp4) f = WeightFormat::kNvfp4;
  if (p == Precision::Int4) f = WeightFormat::kInt4Group128;
  if (!f) return total * precision_bits(p) / 8;
  double bytes = 0, converted = 0;
  for (const ProjectionShape& s : projection_shapes(c)) {
    if (s.cols % weight_format_group(*f) != 0) continue;  // the export keeps it bf16, as below
    bytes += static_cast<double>(s.count) * static_cast<double>(quantized_bytes(*f, s.rows, s.cols));
    converted += static_cast<double>(s.count) * static_cast<double>(s.rows) * static_cast<double>(s.cols);
  }
  return bytes + (total - converted) * 2;
}

MemoryBreakdown memory_breakdown(const ModelConfig& c, const Deployment& d) {
  d.validate();
  const double kv = precision_bits(d.kv_cache) / 8, st = precision_bits(d.state) / 8;
  const double seqs = static_cast<double>(d.batch);
  const double mamba_layers = static_cast<double>(c.count(LayerType::Mamba));
  MemoryBreakdown m;
  m.weights = weight_bytes(c, d.weights);
  m.kv_cache = static_cast<double>(c.count(LayerType::Attention)) *
               static_cast<double>(kv_values_per_token_per_layer(c)) * static_cast<double>(d.context) * seqs * kv;
  m.mamba_ssm = mamba_layers * static_cast<double>(mamba_ssm_state_values(c)) * seqs * st;
  m.mamba_conv = mamba_layers * static_cast<double>(mamba_conv_state_values(c)) * seqs * st;
  m.workspace = d.workspace_bytes;
  m.total = m.weights + m.kv_cache + m.mamba_ssm + m.mamba_conv + m.workspace;
  return m;
}

std::string format_bytes(double b) {
  if (b >= kGiB) return fmt::format("{:.2f} GiB", b / kGiB);
  if (b >= 1024.0 * 1024.0) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024.0));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{:.0f} B", b);
}

}  // namespace minipuzzle
