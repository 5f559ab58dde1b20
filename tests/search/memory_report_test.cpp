// What `minipuzzle inspect` prints, from a config alone.
#include "minipuzzle/memory_report.h"

#include <gtest/gtest.h>

#include "minipuzzle/errors.h"
#include "search_test_util.h"

namespace minipuzzle {
namespace {

TEST(InspectReport, JsonHasCountsParametersAndMemory) {
  const nlohmann::json j = inspect_json(test::reference_config("47b"), test::paper_deployment(), "47b");
  EXPECT_EQ(j["architecture"]["layers"], 98);
  EXPECT_EQ(j["architecture"]["counts"]["mamba"], 45);
  EXPECT_EQ(j["architecture"]["counts"]["attention"], 5);
  EXPECT_EQ(j["architecture"]["counts"]["mlp"], 48);
  EXPECT_EQ(j["parameters"]["total"], 46791554816);
  EXPECT_DOUBLE_EQ(j["weight_bytes"]["fp4"].get<double>(), 46791554816.0 / 2);
  EXPECT_DOUBLE_EQ(j["weight_bytes"]["nvfp4"].get<double>(), 46791554816.0 * 9 / 16);
  EXPECT_NEAR(j["memory"]["total_gib"].get<double>(), 31.69, 0.01);
  EXPECT_EQ(j["deployment"]["kv_cache"], "fp8");
}

TEST(InspectReport, TextShowsTheSameNumbers) {
  const std::string t = inspect_text(test::reference_config("56b"), test::paper_deployment(), "56b");
  EXPECT_NE(t.find("54 Mamba (M), 10 attention (*), 54 MLP (-)"), std::string::npos) << t;
  EXPECT_NE(t.find("56,324,350,464"), std::string::npos) << t;
  EXPECT_NE(t.find("(56.32B)"), std::string::npos) << t;
  EXPECT_NE(t.find("fp4 26.23 GiB"), std::string::npos) << t;
  EXPECT_NE(t.find("19.07 GiB"), t.find("KV cache")) << t;
  EXPECT_NE(t.find("19.07 GiB"), std::string::npos) << t;
  EXPECT_NE(t.find("45.73 GiB"), std::string::npos) << t;
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
