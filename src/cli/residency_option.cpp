#include "residency_option.h"

#include "minipuzzle/model_config.h"

namespace minipuzzle::cli {

po::options_description residency_options() {
  po::options_description opts("memory");
  opts.add_options()
      ("max-device-memory", po::value<std::string>(),
       "memory the weights (and a group's activations) may use: bytes (8GiB) or a percentage (of the GPU; on the "
       "CPU, of the model's weights). Over it the weights stream a block at a time, layer-major over groups of "
       "batches (default: the GPU's memory; on the CPU everything resident)")
      ("dry-run", po::bool_switch(), "print the residency plan and exit");
  return opts;
}

ResidencyPlan plan_forward(const po::variables_map& vm, const std::string& dir, torch::ScalarType dtype,
                           const torch::Device& device, int64_t batch, int64_t seq_len, int64_t batches,
                           ResidencyOptions o) {
  const ModelConfig config = ModelConfig::load(dir);
  o.batch = batch;
  o.seq_len = seq_len;
  o.batches = batches;
  if (vm.count("max-device-memory"))
    o.max_device_memory = parse_max_device_memory(vm["max-device-memory"].as<std::string>(), config, dtype, device);
  return plan_residency(config, dtype, o, device);
}

}  // namespace minipuzzle::cli
