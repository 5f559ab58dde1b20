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
double gib(double bytes) { return bytes / kGiB; }

TEST(ParameterCount, Nemotron56BIs56_32B) {
  const ParamCounts p = count_parameters(reference_config("56b"));
  EXPECT_EQ(p.total, 56324350464);
  EXPECT_DOUBLE_EQ(billions(p.total), 56.32);
}

TEST(ParameterCount, Nemotron47BIs46_79B) {
  const ParamCounts p = count_parameters(reference_config("47b"));
  EXPECT_EQ(p.total, 46791554816);
  EXPECT_DOUBLE_EQ(billions(p.total), 46.79);
}

TEST(ParameterCount, Nemotron8BIs8_1B) {
  // Published as "8B"; the count from the module shapes rounds to 8.1B.
  const ParamCounts p = count_parameters(reference_config("8b"));
  EXPECT_EQ(p.total, 8100852736);
  EXPECT_DOUBLE_EQ(std::round(static_cast<double>(p.total) / 1e8) / 10, 8.1);
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

TEST(Memory, Published47BAtThePaperSettingIs31_69GiB) {
  const MemoryBreakdown m = memory_breakdown(reference_config("47b"), paper_deployment());
  EXPECT_NEAR(gib(m.weights), 21.79, 0.01);
  EXPECT_NEAR(gib(m.kv_cache), 9.54, 0.01);
  EXPECT_NEAR(gib(m.state()), 0.36, 0.01);
  EXPECT_NEAR(gib(m.total), 31.69, 0.01);
  EXPECT_LT(gib(m.total), 31.7);
}

TEST(Memory, Published56BAtThePaperSettingIs45_7GiB) {
  const MemoryBreakdown m = memory_breakdown(reference_config("56b"), paper_deployment());
  EXPECT_NEAR(gib(m.weights), 26.22, 0.01);
  EXPECT_NEAR(gib(m.kv_cache), 19.07, 0.01);
  EXPECT_NEAR(gib(m.state()), 0.43, 0.01);
  EXPECT_NEAR(gib(m.total), 45.73, 0.01);
  EXPECT_DOUBLE_EQ(std::round(gib(m.total) * 10) / 10, 45.7);
}

TEST(Memory, Nvfp4CountsFourAndAHalfBitsPerParameter) {
  EXPECT_DOUBLE_EQ(precision_bits(Precision::Nvfp4), 4.5);  // 4-bit values + one fp8 scale per 16
  const ModelConfig c = tiny_config();
  Deployment d;
  d.weights = Precision::Nvfp4;
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, 63832.0 * 9 / 16);
  d.weights = Precision::Fp4;
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, 63832.0 / 2);
  d.weights = Precision::Fp8;
  EXPECT_DOUBLE_EQ(memory_breakdown(c, d).weights, 63832.0);
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
  EXPECT_THROW(parse_precision("int4", "--precision"), InputError);
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
