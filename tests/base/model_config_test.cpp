#include <gtest/gtest.h>

#include "minipuzzle/errors.h"
#include "minipuzzle/model_config.h"

using minipuzzle::InputError;
using minipuzzle::LayerType;
using minipuzzle::ModelConfig;
using nlohmann::json;

namespace {

json tiny_hub() {
  return json{{"vocab_size", 300},       {"hidden_size", 64},       {"hybrid_override_pattern", "M*-M"},
              {"num_hidden_layers", 4},  {"intermediate_size", 96}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"head_dim", 24},         {"mamba_num_heads", 8},
              {"mamba_head_dim", 16},    {"ssm_state_size", 16},    {"n_groups", 2},
              {"conv_kernel", 4},        {"chunk_size", 32},        {"bos_token_id", 1}};
}

void expect_error_mentions(const json& j, const std::string& needle) {
  try {
    ModelConfig::from_json(j, "config.json");
    FAIL() << "expected InputError mentioning " << needle;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(ModelConfig, ReadsHubStyle) {
  auto c = ModelConfig::from_json(tiny_hub());
  EXPECT_EQ(c.pattern, "M*-M");
  EXPECT_EQ(c.count(LayerType::Mamba), 2);
  EXPECT_EQ(c.head_dim, 24);  // its own key, not hidden / heads
  EXPECT_EQ(c.mamba_d_inner(), 128);
  EXPECT_EQ(c.mamba_conv_dim(), 128 + 2 * 2 * 16);
  EXPECT_EQ(c.mamba_in_proj_dim(), 128 + 192 + 8);
  EXPECT_DOUBLE_EQ(c.time_step_min, 0.001);
}

TEST(ModelConfig, ReadsTransformers5StyleAndLegacyAliases) {
  json j = tiny_hub();
  j.erase("hybrid_override_pattern");
  j.erase("n_groups");
  j.erase("conv_kernel");
  j["layers_block_type"] = {"linear_attention", "full_attention", "mlp", "mamba"};
  j["mamba_n_groups"] = 2;
  j["mamba_d_conv"] = 3;
  auto c = ModelConfig::from_json(j);
  EXPECT_EQ(c.pattern, "M*-M");
  EXPECT_EQ(c.n_groups, 2);
  EXPECT_EQ(c.conv_kernel, 3);
}

TEST(ModelConfig, WritesHubStyleAndKeepsUnknownKeys) {
  auto c = ModelConfig::from_json(tiny_hub());
  json out = c.to_json();
  EXPECT_EQ(out["hybrid_override_pattern"], "M*-M");
  EXPECT_EQ(out["num_hidden_layers"], 4);
  EXPECT_FALSE(out.contains("layers_block_type"));
  EXPECT_EQ(out["bos_token_id"], 1);
  EXPECT_EQ(out["model_type"], "nemotron_h");
  EXPECT_EQ(ModelConfig::from_json(out), c);
}

TEST(ModelConfig, AcceptsPythonInfinityTokens) {
  std::string text = tiny_hub().dump();
  text.insert(text.size() - 1,
              R"(, "time_step_limit": [0.0, Infinity], "other": [NaN, -Infinity], "note": "Infinity stays a string")");
  auto c = ModelConfig::from_json_text(text, "config.json");
  EXPECT_EQ(c.extra["note"], "Infinity stays a string");
  EXPECT_EQ(c.extra["other"], json::array({"NaN", "-Infinity"}));
  // What we write is strict JSON, and time_step_limit (unused) is dropped.
  auto back = json::parse(c.to_json_text());
  EXPECT_FALSE(back.contains("time_step_limit"));
}

TEST(ModelConfig, LayersBlockTypeWinsOverPatternLikeTransformers) {
  json j = tiny_hub();
  j["layers_block_type"] = {"mlp", "mlp", "mlp", "mlp"};
  EXPECT_EQ(ModelConfig::from_json(j).pattern, "----");
}

TEST(ModelConfig, AbsentKeysTakeTransformersDefaults) {
  json j = tiny_hub();
  j.erase("head_dim");
  j.erase("num_key_value_heads");
  j.erase("n_groups");
  j["num_attention_heads"] = 16;
  auto c = ModelConfig::from_json(j);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.n_groups, 8);
}

TEST(ModelConfig, RejectsUnknownLayerCharacter) {
  json j = tiny_hub();
  j["hybrid_override_pattern"] = "M*X-";
  expect_error_mentions(j, "unknown layer character 'X'");
}

// MoE layers need their sizes (tests/model/moe_mixer_test.cpp reads them).
TEST(ModelConfig, RejectsMoeLayersWithoutMoeKeys) {
  json j = tiny_hub();
  j["hybrid_override_pattern"] = "M*E-";
  expect_error_mentions(j, "missing key \"n_routed_experts\" (required: the pattern has MoE layers)");
}

TEST(ModelConfig, RejectsLayerCountMismatch) {
  json j = tiny_hub();
  j["num_hidden_layers"] = 5;
  expect_error_mentions(j, "num_hidden_layers is 5");
}

TEST(ModelConfig, RejectsMambaHeadsNotMultipleOfGroups) {
  json j = tiny_hub();
  j["n_groups"] = 3;
  expect_error_mentions(j, "mamba_num_heads (8) must be a multiple of n_groups (3)");
}

TEST(ModelConfig, RejectsAttentionHeadsNotMultipleOfKvHeads) {
  json j = tiny_hub();
  j["num_key_value_heads"] = 3;
  expect_error_mentions(j, "num_attention_heads (4) must be a multiple of num_key_value_heads (3)");
}

TEST(ModelConfig, RejectsNonPositiveAndHugeSizes) {
  json j = tiny_hub();
  j["hidden_size"] = 0;
  expect_error_mentions(j, "\"hidden_size\" must be positive");
  j = tiny_hub();
  j["vocab_size"] = int64_t{1} << 40;
  expect_error_mentions(j, "\"vocab_size\" is");
}

TEST(ModelConfig, RejectsWrongTypesNamingTheKey) {
  json j = tiny_hub();
  j["hidden_size"] = "64";
  expect_error_mentions(j, "\"hidden_size\" must be an integer");
  j = tiny_hub();
  j.erase("vocab_size");
  expect_error_mentions(j, "missing key \"vocab_size\"");
}

TEST(ModelConfig, RejectsInvalidJsonText) {
  EXPECT_THROW(ModelConfig::from_json_text("{\"vocab_size\": ", "config.json"), InputError);
  EXPECT_THROW(ModelConfig::from_json_text("[1,2]", "config.json"), InputError);
}

TEST(ModelConfig, ReadsThePublishedConfigs) {
  for (const char* name : {"nemotron-h-8b", "nemotron-h-47b", "nemotron-h-56b"}) {
    auto c = ModelConfig::load(std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/configs/" + name + ".config.json");
    EXPECT_EQ(c.num_layers(), static_cast<int64_t>(c.pattern.size())) << name;
    EXPECT_EQ(c.head_dim, 128) << name;
  }
}

// Found by fuzzing (tests/fuzz): sizes of a layer type the pattern lacks were
// not range-checked, and derived sizes (mamba_d_inner, ...) overflowed int64.
TEST(ModelConfig, RangeChecksSizesOfAbsentLayerTypes) {
  json j = tiny_hub();
  j["hybrid_override_pattern"] = "--";
  j["num_hidden_layers"] = 2;
  j["mamba_num_heads"] = int64_t{1} << 62;
  j["mamba_head_dim"] = int64_t{1} << 62;
  expect_error_mentions(j, "\"mamba_num_heads\" is 4611686018427387904, larger than the supported");
  j = tiny_hub();
  j["hybrid_override_pattern"] = "MM";
  j["num_hidden_layers"] = 2;
  j["head_dim"] = -1;
  expect_error_mentions(j, "\"head_dim\" must not be negative");
  j = tiny_hub();
  j["hybrid_override_pattern"] = "--";
  j["num_hidden_layers"] = 2;
  j["mamba_num_heads"] = 1 << 21;
  j["mamba_head_dim"] = 1 << 21;
  expect_error_mentions(j, "\"mamba in_proj size\" is");
  // Zero sizes for an absent type stay fine (an MLP-only model).
  j = json{{"vocab_size", 8}, {"hidden_size", 4}, {"hybrid_override_pattern", "--"}, {"intermediate_size", 8}};
  EXPECT_EQ(ModelConfig::from_json(j).num_layers(), 2);
}

// Found by fuzzing: a deeply nested value (kept in `extra`) overflowed the
// stack when copied; parse_json_lenient limits nesting to kMaxJsonNesting.
TEST(ModelConfig, RejectsDeeplyNestedJson) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  try {
    ModelConfig::from_json_text("{\"vocab_size\": 8, \"x\": " + deep + "}", "config.json");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: JSON nested deeper than 64 levels"), std::string::npos)
        << e.what();
  }
  // 64 levels, the top-level object included, parse.
  EXPECT_NO_THROW(minipuzzle::parse_json_lenient("{\"x\": " + std::string(63, '[') + std::string(63, ']') + "}", "x"));
  EXPECT_THROW(minipuzzle::parse_json_lenient(std::string(65, '[') + std::string(65, ']'), "x"), InputError);
}
