// `minipuzzle inspect DIR|config.json`: architecture, parameters per layer
// type and memory at a deployment, from config.json alone (no weights). The
// report itself lives in the search library (memory_report.h) and is tested
// there; this file only maps flags to a Deployment.
#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/memory_model.h"
#include "minipuzzle/memory_report.h"
#include "minipuzzle/model_config.h"

namespace minipuzzle::cli {

int cmd_inspect(const Args& args) {
  const std::string usage =
      "minipuzzle inspect DIR|config.json [--json] [--precision P] [--kv-precision P] [--state-precision P] "
      "[--context N] [--batch N] [--workspace SIZE]";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>(), "checkpoint directory or config.json")
      ("json", "print JSON instead of text")
      ("precision", po::value<std::string>()->default_value("bf16"), "weight precision: bf16, fp16, fp32; fp8, nvfp4, int4 as `export --dtype` writes them (projections converted, the rest bf16); fp4: every parameter 4 bits (the paper's accounting)")
      ("kv-precision", po::value<std::string>()->default_value("bf16"), "KV cache precision (the same names)")
      ("state-precision", po::value<std::string>()->default_value("bf16"), "Mamba SSM and conv state precision")
      ("context", po::value<int64_t>()->default_value(8192), "tokens per sequence in the KV cache")
      ("batch", po::value<int64_t>()->default_value(1), "concurrent sequences")
      ("workspace", po::value<std::string>()->default_value("0"), "extra bytes (activations, headroom), e.g. 2GiB");
  po::positional_options_description positional;
  positional.add("model", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, options, positional, vm)) return 0;
  require(vm, "model", usage);

  const std::string source = vm["model"].as<std::string>();
  const ModelConfig config = ModelConfig::load(source);
  Deployment d;
  d.weights = parse_precision(vm["precision"].as<std::string>(), "--precision");
  d.kv_cache = parse_precision(vm["kv-precision"].as<std::string>(), "--kv-precision");
  d.state = parse_precision(vm["state-precision"].as<std::string>(), "--state-precision");
  d.context = vm["context"].as<int64_t>();
  d.batch = vm["batch"].as<int64_t>();
  d.workspace_bytes = parse_bytes(vm["workspace"].as<std::string>(), "--workspace");
  d.validate();

  if (vm.count("json"))
    std::cout << inspect_json(config, d, source).dump(2) << "\n";
  else
    std::cout << inspect_text(config, d, source);
  return 0;
}

}  // namespace minipuzzle::cli
