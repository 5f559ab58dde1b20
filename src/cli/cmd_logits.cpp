// minipuzzle logits DIR --tokens TOKENS.safetensors --out OUT.safetensors
// Test support for the oracle tests: our logits for given token ids.
#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/tensor_bridge.h"
#include "minipuzzle/token_batches.h"

namespace minipuzzle::cli {

int cmd_logits(const Args& args) {
  const std::string usage =
      "minipuzzle logits DIR --tokens TOKENS.safetensors --out OUT.safetensors [--dtype fp32|bf16] [--device cpu|cuda]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "checkpoint directory")
      ("tokens", po::value<std::string>(), "safetensors file with tensor input_ids (I64 or I32, [batch, length])")
      ("out", po::value<std::string>(), "output safetensors file: tensor logits, F32 [batch, length, vocab]")
      ("dtype", po::value<std::string>()->default_value("fp32"), "compute dtype: fp32 | bf16 | fp16")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu | cuda | cuda:N");
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  require(vm, "tokens", usage);
  require(vm, "out", usage);
  check_output_file(vm["out"].as<std::string>(), "--out");

  const std::string tokens_path = vm["tokens"].as<std::string>();
  auto file = SafetensorsFile::open(tokens_path);
  const TensorInfo* info = file->find("input_ids");
  if (!info) throw InputError(tokens_path + ": no tensor named input_ids");
  if (info->shape.size() != 2 || (info->dtype != DType::I64 && info->dtype != DType::I32))
    throw InputError(tokens_path + ": input_ids must be I64 or I32 with shape [batch, length]");
  auto tokens = tensor_view(file, *info).to(torch::kInt64);

  auto model = load_model(vm["dir"].as<std::string>(), parse_model_dtype(vm["dtype"].as<std::string>()),
                          parse_device(vm["device"].as<std::string>()));
  check_token_range(tokens, model->config().vocab_size, tokens_path);
  torch::NoGradGuard no_grad;
  auto logits = model->forward(tokens.to(model->device())).to(torch::kCPU).contiguous();
  write_safetensors(vm["out"].as<std::string>(),
                    {{"logits", DType::F32, logits.sizes().vec(), logits.data_ptr(),
                      static_cast<size_t>(logits.numel()) * sizeof(float)}});
  return 0;
}

}  // namespace minipuzzle::cli
