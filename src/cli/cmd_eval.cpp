// minipuzzle eval DIR --data PREFIX [--seq-len N] [--batch N] [--max-tokens N] [--warmup-batches N]
//                 [--max-device-memory SIZE|PCT] [--dry-run] [--json]
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/evaluate.h"
#include "minipuzzle/streamed_model.h"
#include "residency_option.h"
#include "minipuzzle/token_windows.h"

namespace minipuzzle::cli {

namespace {

// Windows evaluate() will run (for the plan's group bound).
int64_t eval_windows(const IndexedDataset& data, int64_t seq_len, uint64_t max_tokens) {
  if (seq_len <= 0 || data.total_tokens() < static_cast<uint64_t>(seq_len) + 1) return 1;
  if (max_tokens > 0 && max_tokens < static_cast<uint64_t>(seq_len)) return 1;  // evaluate() refuses it
  return static_cast<int64_t>(sequential_windows(data.total_tokens(), seq_len, max_tokens / seq_len).size());
}

}  // namespace

int cmd_eval(const Args& args) {
  const std::string usage =
      "minipuzzle eval DIR --data PREFIX [--seq-len N] [--batch N] [--max-tokens N] [--warmup-batches N] "
      "[--max-device-memory SIZE|PCT] [--dry-run] [--json]";
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
  opts.add(residency_options());
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  // --dry-run plans from the config alone; without --data it plans for one batch.
  const bool dry_run = vm["dry-run"].as<bool>();
  if (!dry_run) require(vm, "data", usage);

  auto data = vm.count("data") ? IndexedDataset::open(vm["data"].as<std::string>()) : nullptr;
  auto dtype = parse_model_dtype(vm["dtype"].as<std::string>());
  auto device = parse_device(vm["device"].as<std::string>());
  EvalOptions eo;
  eo.seq_len = vm["seq-len"].as<int64_t>();
  eo.batch = vm["batch"].as<int64_t>();
  eo.max_tokens = vm["max-tokens"].as<uint64_t>();
  eo.warmup_batches = vm["warmup-batches"].as<int64_t>();
  const std::string dir = vm["dir"].as<std::string>();
  const int64_t windows = data                ? eval_windows(*data, eo.seq_len, eo.max_tokens)
                          : eo.max_tokens > 0 ? std::max<int64_t>(static_cast<int64_t>(eo.max_tokens) / eo.seq_len, 1)
                                              : eo.batch;
  ResidencyOptions needs;
  needs.logit_bytes = eval_logit_bytes(ModelConfig::load(dir).vocab_size, eo.batch * eo.seq_len);
  const ResidencyPlan plan = plan_forward(vm, dir, dtype, device, eo.batch, eo.seq_len,
                                          (windows + eo.batch - 1) / std::max<int64_t>(eo.batch, 1), needs);
  if (dry_run) {
    std::cout << plan.describe() << "\n";
    return 0;
  }
  if (!vm["json"].as<bool>()) std::cout << plan.describe() << std::endl;
  ForwardModel model(dir, dtype, device, plan);
  EvalResult r = evaluate(model, *data, eo);

  if (vm["json"].as<bool>()) {
    nlohmann::json j = {{"loss", r.loss},         {"perplexity", r.perplexity}, {"accuracy", r.accuracy},
                        {"tokens", r.tokens},     {"windows", r.windows},       {"seq_len", eo.seq_len},
                        {"seconds", r.seconds},   {"tokens_per_second", r.tokens / std::max(r.seconds, 1e-9)},
                        {"warmup_batches", eo.warmup_batches},
                        {"residency", plan.streamed ? "streamed" : "resident"},
                        {"weight_bytes_peak", model.peak_bytes_held()}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << fmt::format("loss {:.4f}  perplexity {:.3f}  accuracy {:.4f}  tokens {}  ({:.1f} s, {:.0f} tok/s)\n",
                             r.loss, r.perplexity, r.accuracy, r.tokens, r.seconds,
                             r.tokens / std::max(r.seconds, 1e-9));
  }
  return 0;
}

}  // namespace minipuzzle::cli
