// The memory model against the published configs and by-hand arithmetic.
#include "minipuzzle/memory_model.h"

#include <gtest/gtest.h>

#include <cmath>

#include "minipuzzle/errors.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

using test::paper_deployment;
using test::reference_config;
using test::tiny_config;

double billions(int64_t n) { return std::round(static_cast<double>(n) / 1e7) / 100; }  // to 0.01B

// Every published config we support, against transformers' count of the
// same config (tests/search/transformers_param_counts.json), group by group.
TEST(ParameterCount, PublishedConfigsMatchTransformers) {
  for (const char* name : {"nemotron-h-4b", "nemotron-h-8b", "nemotron-h-47b", "nemotron-h-56b",
                           "nemotron-nano-9b-v2", "nemotron-nano-12b-v2"}) {
    const ParamCounts ours = count_parameters(test::published_config(name));
    const ParamCounts hf = test::transformers_counts(name);
    EXPECT_EQ(ours.embeddings, hf.embeddings) << name;
    EXPECT_EQ(ours.lm_head, hf.lm_head) << name;
    EXPECT_EQ(ours.final_norm, hf.final_norm) << name;
    EXPECT_EQ(ours.per_mamba_layer, hf.per_mamba_layer) << name;
    EXPECT_EQ(ours.per_attention_layer, hf.per_attention_layer) << name;
    EXPECT_EQ(ours.per_mlp_layer, hf.per_mlp_layer) << name;
    EXPECT_EQ(ours.mamba, hf.mamba) << name;
    EXPECT_EQ(ours.attention, hf.attention) << name;
    EXPECT_EQ(ours.mlp, hf.mlp) << name;
    EXPECT_EQ(ours.total, hf.total) << name;
  }
}

// Nemotron 3 Nano 30B-A3B (23 MoE layers of 128 routed experts, 6 per
// token): every group, the routed experts and the active count against
// transformers' count of the same config.
TEST(ParameterCount, MoeConfigMatchesTransformers) {
  const char* name = "nemotron-3-nano-30b-a3b";
  const ModelConfig c = test::published_config(name);
  ASSERT_EQ(c.count(LayerType::Moe), 23);
  const ParamCounts ours = count_parameters(c);
  const ParamCounts hf = test::transformers_counts(name);
  EXPECT_EQ(ours.embeddings, hf.embeddings);
  EXPECT_EQ(ours.per_mamba_layer, hf.per_mamba_layer);
  EXPECT_EQ(ours.per_attention_layer, hf.per_attention_layer);
  EXPECT_EQ(ours.per_moe_layer, hf.per_moe_layer);
  EXPECT_EQ(ours.moe, hf.moe);
  EXPECT_EQ(ours.moe_routed_experts, hf.moe_routed_experts);
  EXPECT_EQ(ours.total, hf.total);
  EXPECT_EQ(ours.active, hf.active);
  // Announced as 31.6B total (transformers: 31.58B), ~3.5B active with embeddings.
  EXPECT_DOUBLE_EQ(billions(ours.total), 31.58);
  EXPECT_DOUBLE_EQ(billions(ours.active), 3.58);
  // Memory counts every expert resident: bf16 weights are 2 bytes x total.
  EXPECT_DOUBLE_EQ(memory_breakdown(c, Deployment{}).weights, 2.0 * static_cast<double>(ours.total));
}

// An MoE layer by hand, with latent projections: norm D, router E*D, E
// experts of 2*L*F, shared 2*D*Fs, latent 2*D*L.
TEST(ParameterCount, MoeLayerByHand) {
  ModelConfig c = tiny_config();
  c.pattern = "ME";
  c.n_routed_experts = 6;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 10;
  c.moe_shared_expert_intermediate_size = 12;
  c.moe_latent_size = 8;
  c.n_group = 3;
  c.topk_group = 2;
  c.validate();
  const int64_t D = 64;
  EXPECT_EQ(moe_layer_params(c), D + 6 * D + 6 * 2 * 8 * 10 + 2 * D * 12 + 2 * D * 8);
  const ParamCounts p = count_parameters(c);
  EXPECT_EQ(p.total, p.embeddings + p.lm_head + p.final_norm + p.mamba + moe_layer_params(c));
  EXPECT_EQ(p.total - p.active, 4 * 2 * 8 * 10);  // the 4 experts a token does not use
  c.moe_latent_size = 0;  // experts then read the hidden state
  EXPECT_EQ(moe_routed_expert_params(c), 6 * 2 * D * 10);
}

// The sizes the papers and model cards publish, to 0.01B.
TEST(ParameterCount, PublishedSizesRoundAsAnnounced) {
  EXPECT_DOUBLE_EQ(billions(count_parameters(reference_config("56b")).total), 56.32);
  EXPECT_DOUBLE_EQ(billions(count_parameters(reference_config("47b")).total), 46.79);
  // Published as "8B"; the module shapes give 8.10B.
  EXPECT_DOUBLE_EQ(billions(count_parameters(reference_config("8b")).total), 8.10);
}

TEST(ParameterCount, PerLayerMatchesModuleShapesByHand) {
  const ModelConfig c = tiny_config();
  // Mamba: norm 64 + in_proj 64*(2*32 + 2*2*16 + 4) + conv 96*4 + bias 96
  //        + A_log, D, dt_bias 3*4 + gated norm 32 + out_proj 32*64
  EXPECT_EQ(mamba_layer_params(c), 64 + 8448 + 384 + 96 + 12 + 32 + 2048);
  // Attention: norm 64 + q 64*64 + k, v 64*32 each + o 64*64
  EXPECT_EQ(attention_layer_params(c), 64 + 4096 + 2048 + 2048 + 4096);
  // MLP: norm 64 + up 64*128 + down 128*64
  EXPECT_EQ(mlp_layer_params(c), 64 + 8192 + 8192);
  const ParamCounts p = count_parameters(c);
  EXPECT_EQ(p.embeddings, 6400);
  EXPECT_EQ(p.lm_head, 6400);
  EXPECT_EQ(p.final_norm, 64);
  EXPECT_EQ(p.mamba, 2 * 11084);
  EXPECT_EQ(p.total, 6400 + 6400 + 64 + 2 * 11084 + 12352 + 16448);
  EXPECT_EQ(p.non_embedding(), p.total - 12800);
}

TEST(ParameterCount, ConvBiasFollowsTheConfig) {
  ModelConfig c = tiny_config();
  c.use_conv_bias = false;
  EXPECT_EQ(mamba_layer_params(c), 11084 - 96);
}

// By hand from the published shapes (DESIGN.md's table) and transformers'
// parameter count: FP4 weights, FP8 KV cache of the attention layers, bf16
// Mamba state (SSM H*P*N plus the conv window (K-1)*(H*P + 2*G*N)).
struct PaperSetting {
  double weights, kv_cache, state;
  double total() const { return weights + kv_cache + state; }
};

PaperSetting by_hand(const std::string& name, int64_t mamba_layers, int64_t attention_layers) {
  const double weights = static_cast<double>(test::transformers_counts(name).total) / 2;  // 4 bits
  const double kv_cache = 2.0 * attention_layers * 8 * 128 * 1000000 * 1;               // K+V, 8 kv x 128, fp8
  const double state_values = 256.0 * 64 * 256 + 3.0 * (256 * 64 + 2 * 8 * 256);        // 256 x 64 heads, N 256, G 8
  return {weights, kv_cache, mamba_layers * state_values * 2};
}

// The paper's anchor: the 47B is the MiniPuzzle result under a 31.7 GiB
// budget at this setting, so it fits and leaves little of it unused.
TEST(Memory, Published47BFitsThePapers31_7GiBBudget) {
  const MemoryBreakdown m = memory_breakdown(reference_config("47b"), paper_deployment());
  const PaperSetting want = by_hand("nemotron-h-47b", 45, 5);
  EXPECT_DOUBLE_EQ(m.weights, want.weights);
  EXPECT_DOUBLE_EQ(m.kv_cache, want.kv_cache);
  EXPECT_DOUBLE_EQ(m.state(), want.state);
  EXPECT_DOUBLE_EQ(m.total, want.total());
  EXPECT_LT(m.total, test::paper_budget());
  EXPECT_GT(m.total, 0.99 * test::paper_budget());
}

TEST(Memory, Published56BDoesNotFitThePapersBudget) {
  const MemoryBreakdown m = memory_breakdown(reference_config("56b"), paper_deployment());
  const PaperSetting want = by_hand("nemotron-h-56b", 54, 10);
  EXPECT_DOUBLE_EQ(m.weights, want.weights);
  EXPECT_DOUBLE_EQ(m.kv_cache, want.kv_cache);
  EXPECT_DOUBLE_EQ(m.state(), want.state);
  EXPECT_DOUBLE_EQ(m.total, want.total());
  EXPECT_GT(m.total, test::paper_budget());
}

TEST(Memory, ExportFormatsCountWhatTheExportWrites) {
  EXPECT_DOUBLE_EQ(precision_bits(Precision::Nvfp4), 4.5);  // 4-bit values + one fp8 scale per 16
  EXPECT_DOUBLE_EQ(precision_bits(Precision::Int4), 4.125);  // + one bf16 scale per 128
  const ModelConfig c = tiny_config();  // 63832 parameters
  // Projections [rows, cols]: Mamba in_proj [132, 64] and out_proj [64, 32] (x2 layers), q/o [64, 64],
  // k/v [32, 64], up [128, 64], down [64, 128]: 49664 weights in 10 tensors; 14168 other parameters.
  const double other = 63832.0 - 49664;
  Deployment d;
  d.weights = Precision::Nvfp4;  // every width divides 16: 4.5 bits + a 4-byte global scale per tensor
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, other * 2 + 49664.0 * 9 / 16 + 4 * 10);
  d.weights = Precision::Fp8;  // 1 byte + a bf16 scale per row (776 rows)
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, other * 2 + 49664.0 + 2 * 776);
  // int4 packs only widths that 128 divides (down_proj); the rest stays bf16, as the exporter leaves it.
  d.weights = Precision::Int4;
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, (63832.0 - 8192) * 2 + 8192 / 2 + 8192 / 128 * 2 + 16);
  // The paper's accounting: every parameter at 4 bits.
  d.weights = Precision::Fp4;
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, 63832.0 / 2);
  d.weights = Precision::Bf16;
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, 63832.0 * 2);
}

TEST(Memory, ProjectionShapesAreTheMixersMatrices) {
  const ModelConfig c = tiny_config();
  int64_t n = 0, tensors = 0;
  for (const ProjectionShape& p : projection_shapes(c)) n += p.rows * p.cols * p.count, tensors += p.count;
  EXPECT_EQ(n, 49664);
  EXPECT_EQ(tensors, 10);
  // The non-projection parameters: embeddings, lm_head, norms, conv1d, A_log, D, dt_bias, gated norms.
  const ParamCounts pc = count_parameters(c);
  EXPECT_EQ(pc.total - n, pc.embeddings + pc.lm_head + pc.final_norm + 4 * 64 /* block norms */ +
                              2 * (96 * 4 + 96 + 3 * 4 + 32) /* conv1d + bias, A_log/D/dt_bias, gated norm */);
}

TEST(Memory, ThePublished47bAtNvfp4) {
  // 44,637,880,320 projection weights at 4.5 bits + 206 global scales; embeddings, lm_head, norms,
  // conv and SSM parameters (2,153,674,496) at bf16: 27.40 GiB, against 21.79 GiB in the paper's fp4
  // accounting. With the paper's FP8 KV cache and bf16 state at 1M context: 37.29 GiB (paper: 31.7).
  const ModelConfig c = test::reference_config("47b");
  const double proj = 44637880320.0, other = 46791554816.0 - proj;
  EXPECT_DOUBLE_EQ(weight_bytes(c, Precision::Nvfp4), proj * 9 / 16 + 4 * 206 + other * 2);
  Deployment d = test::paper_deployment();
  d.weights = Precision::Nvfp4;
  EXPECT_NEAR(memory_breakdown(c, d).total / kGiB, 37.29, 0.005);
}

TEST(Memory, KvCacheAndStateByHand) {
  const ModelConfig c = tiny_config();
  Deployment d;
  d.weights = Precision::Bf16;
  d.kv_cache = Precision::Fp8;
  d.state = Precision::Bf16;
  d.context = 10;
  d.batch = 3;
  d.workspace_bytes = 1000;
  const MemoryBreakdown m = memory_breakdown(c, d);
  EXPECT_DOUBLE_EQ(m.kv_cache, 2.0 * 1 * 2 * 16 * 10 * 3 * 1);     // K+V, 1 layer, 2 kv x 16, ctx, batch, fp8
  EXPECT_DOUBLE_EQ(m.mamba_ssm, 2.0 * 3 * (4 * 8 * 16) * 2);       // 2 layers, batch, H*P*N, bf16
  EXPECT_DOUBLE_EQ(m.mamba_conv, 2.0 * 3 * (3 * (32 + 64)) * 2);   // (K-1) * conv_dim
  EXPECT_DOUBLE_EQ(m.workspace, 1000);
  EXPECT_DOUBLE_EQ(m.total, 63832.0 * 2 + 1920 + 6144 + 3456 + 1000);
}

TEST(Memory, BadDeploymentIsInputError) {
  Deployment d;
  d.context = 0;
  EXPECT_THROW(memory_breakdown(tiny_config(), d), InputError);
  d.context = 1;
  d.batch = -1;
  EXPECT_THROW(memory_breakdown(tiny_config(), d), InputError);
}

TEST(Precision, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(parse_precision("NVFP4"), Precision::Nvfp4);
  EXPECT_EQ(parse_precision("fp8"), Precision::Fp8);
  EXPECT_EQ(parse_precision("int4"), Precision::Int4);
  EXPECT_THROW(parse_precision("int3", "--precision"), InputError);
}

TEST(Bytes, ParsesBinaryAndDecimalUnits) {
  EXPECT_DOUBLE_EQ(parse_bytes("31.7GiB"), 31.7 * kGiB);
  EXPECT_DOUBLE_EQ(parse_bytes("2 MiB"), 2.0 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(parse_bytes("32GB"), 32e9);
  EXPECT_DOUBLE_EQ(parse_bytes("1e9"), 1e9);
  EXPECT_THROW(parse_bytes("lots"), InputError);
  EXPECT_THROW(parse_bytes("3 parsecs"), InputError);
  EXPECT_THROW(parse_bytes("-1GiB"), InputError);
}

}  // namespace
}  // namespace minipuzzle
