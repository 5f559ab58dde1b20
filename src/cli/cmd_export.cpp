// minipuzzle export DIR --out OUT [--dtype bf16|fp16|fp32|fp8] [--max-shard-size 5GB]
// fp8: projections as F8_E4M3 with per-row scales, the rest bf16 (layout in checkpoint.h).
// Streams: one row chunk of one tensor in memory at a time (checkpoint_rewrite.h).
#include <fmt/format.h>

#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"  // parse_model_dtype

namespace minipuzzle::cli {

int cmd_export(const Args& args) {
  const std::string usage = "minipuzzle export DIR --out OUT [--dtype bf16|fp16|fp32|fp8] [--max-shard-size 5GB]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "checkpoint directory to read (Hub or transformers-5 names)")
      ("out", po::value<std::string>(), "output directory (must not exist, or be empty)")
      ("dtype", po::value<std::string>()->default_value("bf16"), "weight dtype: bf16 | fp16 | fp32 | fp8 (E4M3 projections with per-row scales, the rest bf16)")
      ("max-shard-size", po::value<std::string>()->default_value("5GB"), "largest shard (5GB = 5e9 bytes; GiB = 2^30)");
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  require(vm, "out", usage);
  const std::string dtype_arg = vm["dtype"].as<std::string>();
  torch::ScalarType dtype = torch::kFloat8_e4m3fn;
  if (dtype_arg != "fp8") {
    try {
      dtype = parse_model_dtype(dtype_arg);
    } catch (const InputError&) {
      throw InputError("unknown --dtype '" + dtype_arg + "'; expected bf16, fp16, fp32 or fp8");
    }
  }
  uint64_t shard = parse_byte_size(vm["max-shard-size"].as<std::string>());
  const std::string out = vm["out"].as<std::string>();
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && !std::filesystem::is_empty(out, ec))
    throw InputError(out + " already exists and is not empty; choose a new output directory");

  // Tensor by tensor from the mapped files: the model is never held.
  const std::string dir = vm["dir"].as<std::string>();
  if (!std::filesystem::is_directory(dir, ec)) throw InputError(dir + ": not a checkpoint directory");
  const ModelConfig config = ModelConfig::load(dir);
  const CheckpointReader reader = CheckpointReader::open(dir);
  const std::string first_expert = "backbone.layers." + std::to_string(config.pattern.find('E')) + ".mixer.experts.0.up_proj.weight";
  if (config.has_moe() && !reader.contains(first_expert)) {
    // transformers-5 fused expert tensors: the tensor-by-tensor rewrite reads
    // Hub names only, so the model is loaded (fp32, whole) and written in the
    // Hub layout.
    HybridLM model = load_model(dir, torch::kFloat32, torch::kCPU);
    save_model(model, out, dtype, shard);
    int64_t params = 0;
    for (const auto& p : model->parameters()) params += p.numel();
    std::cout << fmt::format("exported {} parameters ({}) to {}\n", params, dtype_arg, out);
    return 0;
  }
  const int64_t params = rewrite_checkpoint(reader, config, config, identity_recipes(config), dtype, out, shard);
  std::cout << fmt::format("exported {} parameters ({}) to {}\n", params, dtype_arg, out);
  return 0;
}

}  // namespace minipuzzle::cli
