// minipuzzle eval DIR --data PREFIX [--seq-len N] [--batch N] [--max-tokens N] [--warmup-batches N] [--json]
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/evaluate.h"

namespace minipuzzle::cli {

int cmd_eval(const Args& args) {
  const std::string usage =
      "minipuzzle eval DIR --data PREFIX [--seq-len N] [--batch N] [--max-tokens N] [--warmup-batches N] [--json]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "checkpoint directory (config.json + *.safetensors)")
      ("data", po::value<std::string>(), "Megatron dataset prefix (PREFIX.bin / PREFIX.idx)")
      ("seq-len", po::value<int64_t>()->default_value(2048), "tokens per window")
      ("batch", po::value<int64_t>()->default_value(1), "windows per forward pass")
      ("max-tokens", po::value<uint64_t>()->default_value(0), "predicted tokens to use at most (0 = all)")
      ("warmup-batches", po::value<int64_t>()->default_value(0), "untimed, unscored passes over the first batch")
      ("dtype", po::value<std::string>()->default_value("fp32"), "compute dtype: fp32 | bf16 | fp16")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda | cuda:N")
      ("json", po::bool_switch(), "print one JSON object");
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  require(vm, "data", usage);

  auto data = IndexedDataset::open(vm["data"].as<std::string>());
  auto dtype = parse_model_dtype(vm["dtype"].as<std::string>());
  auto device = parse_device(vm["device"].as<std::string>());
  auto model = load_model(vm["dir"].as<std::string>(), dtype, device);
  EvalOptions eo;
  eo.seq_len = vm["seq-len"].as<int64_t>();
  eo.batch = vm["batch"].as<int64_t>();
  eo.max_tokens = vm["max-tokens"].as<uint64_t>();
  eo.warmup_batches = vm["warmup-batches"].as<int64_t>();
  EvalResult r = evaluate(model, *data, eo);

  if (vm["json"].as<bool>()) {
    nlohmann::json j = {{"loss", r.loss},         {"perplexity", r.perplexity}, {"accuracy", r.accuracy},
                        {"tokens", r.tokens},     {"windows", r.windows},       {"seq_len", eo.seq_len},
                        {"seconds", r.seconds},   {"tokens_per_second", r.tokens / std::max(r.seconds, 1e-9)},
                        {"warmup_batches", eo.warmup_batches}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << fmt::format("loss {:.4f}  perplexity {:.3f}  accuracy {:.4f}  tokens {}  ({:.1f} s, {:.0f} tok/s)\n",
                             r.loss, r.perplexity, r.accuracy, r.tokens, r.seconds,
                             r.tokens / std::max(r.seconds, 1e-9));
  }
  return 0;
}

}  // namespace minipuzzle::cli
