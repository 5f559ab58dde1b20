// minipuzzle export DIR --out OUT [--dtype bf16|fp16|fp32|fp8|nvfp4|int4]
//   [--format compressed-tensors|fp8-transformers] [--dequantized] [--base-model ID] [--max-shard-size 5GB]
// fp8 / nvfp4 / int4: the projections in a compressed-tensors format (weight
// only, weight_quantization.h), the rest bf16; --format fp8-transformers keeps
// the older FineGrainedFP8 layout of checkpoint.h. The folder gets the
// source's tokenizer / generation / chat-template files and a model card.
// Streams: one row chunk of one tensor in memory at a time (checkpoint_rewrite.h).
#include <fmt/format.h>

#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/checkpoint_rewrite.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/hybrid_lm.h"  // parse_model_dtype
#include "minipuzzle/model_folder_files.h"

namespace minipuzzle::cli {

namespace {

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:#@,+") ==
                        std::string::npos)
    return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

int64_t parameter_count(const ModelConfig& config) {
  int64_t total = 0;
  for (const auto& r : identity_recipes(config)) {
    int64_t n = 1;
    for (int64_t d : r.shape) n *= d;
    total += n;
  }
  return total;
}

std::string card_body(const std::string& source, const ModelConfig& config, int64_t params,
                      const std::string& precision, const QuantizationReport* report, const Args& args,
                      const std::string& out_name) {
  std::string b;
  b += "Exported by MiniPuzzle (`minipuzzle export`) from `" + source + "`.\n\n";
  b += "## Lineage\n\n";
  b += "| | |\n|---|---|\n";
  b += "| source | `" + source + "` |\n";
  b += fmt::format("| architecture | Nemotron-H, {} layers `{}`, hidden {}, vocab {} |\n", config.num_layers(),
                   config.pattern, config.hidden_size, config.vocab_size);
  b += fmt::format("| parameters | {} (same as the source: export changes only the storage) |\n", params);
  b += "| weights | " + precision + " |\n";
  if (report) {
    b += fmt::format("| quantized tensors | {} projections; relative Frobenius error mean {:.4g}", report->quantized.size(),
                     report->mean_relative_error());
    if (const auto* w = report->worst()) b += fmt::format(", worst {:.4g} (`{}`)", w->relative_error, w->name);
    b += " |\n";
    if (!report->kept_bf16.empty())
      b += fmt::format("| kept bf16 (width not packable) | {} projections, see quantization_report.json |\n",
                       report->kept_bf16.size());
  }
  b += "\nWhat stays bf16 in quantized exports: embeddings, lm_head, norms, conv1d, A_log, D, dt_bias.\n";
  // --out as the folder's own name: the card is the same wherever the folder
  // was written (and moves with it).
  b += "\n## Reproduce\n\n```sh\nminipuzzle export";
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (i > 0 && args[i - 1] == "--out") a = out_name;
    if (a.rfind("--out=", 0) == 0) a = "--out=" + out_name;
    b += " " + shell_quote(a);
  }
  b += "\n```\n";
  return b;
}

}  // namespace

int cmd_export(const Args& args) {
  const std::string usage =
      "minipuzzle export DIR --out OUT [--dtype bf16|fp16|fp32|fp8|nvfp4|int4] "
      "[--format compressed-tensors|fp8-transformers] [--dequantized] [--base-model ID] [--max-shard-size 5GB]";
  po::options_description opts("options");
  opts.add_options()
      ("dir", po::value<std::string>(), "checkpoint directory to read (Hub or transformers-5 names)")
      ("out", po::value<std::string>(), "output directory (must not exist, or be empty)")
      ("dtype", po::value<std::string>()->default_value("bf16"),
       "weight dtype: bf16 | fp16 | fp32, or a weight-only quantization of the projections (the rest bf16): "
       "fp8 (E4M3, one scale per output channel) | nvfp4 (E2M1, FP8 scale per 16, fp32 global scale) | "
       "int4 (symmetric, bf16 scale per 128)")
      ("format", po::value<std::string>(),
       "compressed-tensors (default for fp8/nvfp4/int4: what vLLM and transformers read) | fp8-transformers "
       "(--dtype fp8 only: transformers' FineGrainedFP8 layout, per-row fp32 scales)")
      ("dequantized", po::bool_switch(),
       "write the quantized weights dequantized, as a plain bf16 checkpoint (the model the quantized export "
       "runs, for eval/logits)")
      ("base-model", po::value<std::string>(), "base_model of the model card (default: the source's Hub id or folder name)")
      ("max-shard-size", po::value<std::string>()->default_value("5GB"), "largest shard (5GB = 5e9 bytes; GiB = 2^30)");
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  if (!parse_args(usage, args, opts, pos, vm)) return 0;
  require(vm, "dir", usage);
  require(vm, "out", usage);
  const std::string dtype_arg = vm["dtype"].as<std::string>();
  torch::ScalarType dtype = torch::kBFloat16;
  RewriteOptions options;
  if (auto f = weight_format_from_name(dtype_arg)) {
    const std::string format = vm.count("format") ? vm["format"].as<std::string>() : "compressed-tensors";
    if (format == "fp8-transformers" && *f == WeightFormat::kFp8Channel)
      dtype = torch::kFloat8_e4m3fn;
    else if (format == "compressed-tensors")
      options.quantize = *f;
    else
      throw InputError("unknown --format '" + format + "' for --dtype " + dtype_arg + "; expected compressed-tensors" +
                       (*f == WeightFormat::kFp8Channel ? " or fp8-transformers" : ""));
  } else {
    try {
      dtype = parse_model_dtype(dtype_arg);
    } catch (const InputError&) {
      throw InputError("unknown --dtype '" + dtype_arg + "'; expected bf16, fp16, fp32, fp8, nvfp4 or int4");
    }
    if (vm.count("format"))
      throw InputError("--format applies to --dtype fp8, nvfp4 or int4, not " + dtype_arg);
  }
  options.dequantized = vm["dequantized"].as<bool>();
  if (options.dequantized && !options.quantize)
    throw InputError("--dequantized needs a compressed-tensors --dtype (fp8, nvfp4 or int4)");
  uint64_t shard = parse_byte_size(vm["max-shard-size"].as<std::string>());
  const std::string out = vm["out"].as<std::string>();
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && !std::filesystem::is_empty(out, ec))
    throw InputError(out + " already exists and is not empty; choose a new output directory");

  // Tensor by tensor from the mapped files: the model is never held.
  const std::string dir = vm["dir"].as<std::string>();
  if (!std::filesystem::is_directory(dir, ec)) throw InputError(dir + ": not a checkpoint directory");
  const ModelConfig config = ModelConfig::load(dir);
  if (config.extra.contains("quantization_config") && config.extra["quantization_config"].is_object() &&
      config.extra["quantization_config"].value("quant_method", "") == "compressed-tensors")
    throw InputError(dir + " is a compressed-tensors export (packed weights minipuzzle does not read); export from "
                           "the checkpoint it came from, or from an `export --dequantized` one");
  check_model_folder_files(dir);  // a broken tokenizer file is refused before anything is written
  const CheckpointReader reader = CheckpointReader::open(dir);
  const std::string first_expert = "backbone.layers." + std::to_string(config.pattern.find('E')) + ".mixer.experts.0.up_proj.weight";
  if (config.has_moe() && !reader.contains(first_expert)) {
    // transformers-5 fused expert tensors: the tensor-by-tensor rewrite reads
    // Hub names only, so the model is loaded (fp32, whole) and written in the
    // Hub layout.
    if (options.quantize)
      throw InputError(dir + " holds fused expert tensors (transformers-5 layout): export it to bf16 first, then "
                             "quantize that export");
    HybridLM model = load_model(dir, torch::kFloat32, torch::kCPU);
    save_model(model, out, dtype, shard);
    int64_t params = 0;
    for (const auto& p : model->parameters()) params += p.numel();
    const auto copied = copy_model_folder_files(dir, out);
    std::cout << fmt::format("exported {} parameters ({}) to {}; copied {} tokenizer/generation files\n", params,
                             dtype_arg, out, copied.size());
    return 0;
  }

  QuantizationReport report;
  options.report = &report;
  const std::string precision =
      options.quantize ? fmt::format("{} (compressed-tensors `{}`, weight only){}", dtype_arg,
                                     compressed_tensors_format(*options.quantize),
                                     options.dequantized ? ", written dequantized in bf16" : "")
      : dtype == torch::kFloat8_e4m3fn ? "fp8 (transformers FineGrainedFP8 layout, per-row scales)"
                                       : dtype_arg;
  const std::filesystem::path out_path(out);
  const std::string out_name =
      out_path.filename().empty() ? out_path.parent_path().filename().string() : out_path.filename().string();
  std::vector<std::string> copied;
  options.add_files = [&](const std::filesystem::path& staging) {
    copied = copy_model_folder_files(dir, staging);
    ModelCard card;
    card.base_model = vm.count("base-model") ? vm["base-model"].as<std::string>() : source_model_name(dir);
    card.title = out_name;
    card.tags = {"minipuzzle", "nemotron-h", "hybrid-mamba"};
    if (options.quantize && !options.dequantized) {
      card.tags.push_back("compressed-tensors");
      card.tags.push_back(dtype_arg);
    } else if (dtype == torch::kFloat8_e4m3fn) {
      card.tags.push_back("fp8");
    }
    card.license_lines = source_license_lines(dir);
    card.body = card_body(dir, config, parameter_count(config), precision, options.quantize ? &report : nullptr, args,
                          out_name);
    write_model_card(staging, card);
  };
  const int64_t params = rewrite_checkpoint(reader, config, config, identity_recipes(config), dtype, out, shard, options);
  std::cout << fmt::format("exported {} parameters ({}) to {}\n", params, precision, out);
  if (options.quantize) {
    const auto* w = report.worst();
    std::cout << fmt::format("quantized {} projections: relative error mean {:.4g}, worst {:.4g}{}; kept bf16: {}",
                             report.quantized.size(), report.mean_relative_error(), w ? w->relative_error : 0.0,
                             w ? " (" + w->name + ")" : std::string(), report.kept_bf16.size());
    for (const auto& [name, why] : report.kept_bf16) std::cout << fmt::format("\n  kept bf16: {} ({})", name, why);
    std::cout << fmt::format("\nper-tensor errors: {}/quantization_report.json\n", out);
  }
  std::cout << fmt::format("copied {} tokenizer/generation files{}; wrote README.md (model card)\n", copied.size(),
                           copied.empty() ? " (the source has none)" : "");
  return 0;
}

}  // namespace minipuzzle::cli
