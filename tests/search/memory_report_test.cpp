// What `minipuzzle inspect` prints, from a config alone.
#include "minipuzzle/memory_report.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "minipuzzle/errors.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

// The first line of `text` after `section` that starts with `label` (after
// its indent), or "".
std::string line_of(const std::string& text, const std::string& label, const std::string& section = "") {
  size_t start = section.empty() ? 0 : text.find(section);
  if (start == std::string::npos) return "";
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    const size_t first = line.find_first_not_of(' ');
    if (first != std::string::npos && line.compare(first, label.size(), label) == 0) return line;
    start = end + 1;
  }
  return "";
}

std::string grouped(int64_t v) {  // 1234567 -> "1,234,567"
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string gib_text(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  return buf;
}

TEST(InspectReport, JsonHasCountsParametersAndMemory) {
  const nlohmann::json j = inspect_json(test::reference_config("47b"), test::paper_deployment(), "47b");
  const int64_t hf_total = test::transformers_counts("nemotron-h-47b").total;
  EXPECT_EQ(j["architecture"]["layers"], 98);
  EXPECT_EQ(j["architecture"]["counts"]["mamba"], 45);
  EXPECT_EQ(j["architecture"]["counts"]["attention"], 5);
  EXPECT_EQ(j["architecture"]["counts"]["mlp"], 48);
  EXPECT_EQ(j["parameters"]["total"], hf_total);
  EXPECT_DOUBLE_EQ(j["weight_bytes"]["fp4"].get<double>(), hf_total / 2.0);
  // The export formats: projections converted, the rest bf16 (memory_model_test has the sums by hand).
  EXPECT_DOUBLE_EQ(j["weight_bytes"]["nvfp4"].get<double>(), weight_bytes(test::reference_config("47b"), Precision::Nvfp4));
  EXPECT_GT(j["weight_bytes"]["nvfp4"].get<double>(), hf_total * 9.0 / 16);  // embeddings and lm_head stay bf16
  EXPECT_LT(j["weight_bytes"]["int4"].get<double>(), j["weight_bytes"]["nvfp4"].get<double>());
  EXPECT_LT(j["memory"]["total_gib"].get<double>(), 31.7);  // the paper's budget, which the 47B fits
  EXPECT_EQ(j["deployment"]["kv_cache"], "fp8");
}

TEST(InspectReport, TextShowsTheSameNumbers) {
  const std::string t = inspect_text(test::reference_config("56b"), test::paper_deployment(), "56b");
  const int64_t hf_total = test::transformers_counts("nemotron-h-56b").total;
  const double params = static_cast<double>(hf_total);
  const double kv_cache = 2.0 * 10 * 8 * 128 * 1000000;  // K+V, 10 attention layers, 8 kv x 128, fp8
  const double state = 54 * (256.0 * 64 * 256 + 3.0 * (256 * 64 + 2 * 8 * 256)) * 2;  // bf16
  EXPECT_NE(t.find("54 Mamba (M), 10 attention (*), 54 MLP (-)"), std::string::npos) << t;
  EXPECT_NE(line_of(t, "total (56.32B)").find(grouped(hf_total)), std::string::npos) << t;  // 56.32B: published
  EXPECT_NE(line_of(t, "weights:").find("fp4 " + gib_text(params / 2)), std::string::npos) << t;
  const std::string memory = "\nmemory at";
  EXPECT_NE(line_of(t, "weights ", memory).find(gib_text(params / 2)), std::string::npos) << t;
  EXPECT_NE(line_of(t, "KV cache ", memory).find(gib_text(kv_cache)), std::string::npos) << t;
  EXPECT_NE(line_of(t, "total ", memory).find(gib_text(params / 2 + kv_cache + state)), std::string::npos) << t;
}

TEST(DeploymentJson, RoundTripsAndRejectsBadValues) {
  const Deployment d = test::paper_deployment();
  const Deployment back = deployment_from_json(deployment_to_json(d), "x");
  EXPECT_EQ(back.weights, d.weights);
  EXPECT_EQ(back.kv_cache, d.kv_cache);
  EXPECT_EQ(back.context, d.context);
  nlohmann::json j = deployment_to_json(d);
  j["weights"] = "int3";
  EXPECT_THROW(deployment_from_json(j, "x"), InputError);
  j = deployment_to_json(d);
  j["batch"] = 0;
  EXPECT_THROW(deployment_from_json(j, "x"), InputError);
}

}  // namespace
}  // namespace minipuzzle
