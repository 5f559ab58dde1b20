// `minipuzzle data build`: text files -> Megatron dataset of byte tokens.
// The walk and encoding live in corpus_builder (minipuzzle_base, tested
// without the CLI); this file only maps flags onto CorpusOptions.
#include <fmt/format.h>

#include <iostream>

#include "cli_common.h"
#include "commands.h"
#include "minipuzzle/corpus_builder.h"
#include "minipuzzle/errors.h"

namespace minipuzzle::cli {

int cmd_data_build(const Args& args) {
  const std::string usage =
      "minipuzzle data build --input FILES_OR_DIRS... --out PREFIX [--dtype uint16|int32] "
      "[--extensions .py,.txt] [--max-bytes N]";
  po::options_description options("data build options");
  options.add_options()
      ("input,i", po::value<std::vector<std::string>>()->multitoken(),
       "files and directories (walked recursively, sorted); one document per file")
      ("out,o", po::value<std::string>(), "output prefix: writes PREFIX.bin and PREFIX.idx")
      ("dtype", po::value<std::string>()->default_value("uint16"), "token dtype: uint16 or int32")
      ("extensions", po::value<std::string>()->default_value(""),
       "comma-separated extensions to take inside directories, e.g. .py,.txt (default: all)")
      ("max-bytes", po::value<uint64_t>()->default_value(0),
       "stop after this many text bytes; the last document is cut (0 = no limit)");
  po::positional_options_description positional;
  positional.add("input", -1);
  po::variables_map vm;
  if (!parse_args(usage, args, options, positional, vm)) return 0;
  if (!vm.count("input")) throw InputError("no input given; usage: " + usage);
  require(vm, "out", usage);

  CorpusOptions opt;
  opt.inputs = vm["input"].as<std::vector<std::string>>();
  opt.out_prefix = vm["out"].as<std::string>();
  const std::string dtype = vm["dtype"].as<std::string>();
  if (dtype == "uint16")
    opt.dtype = TokenDType::U16;
  else if (dtype == "int32")
    opt.dtype = TokenDType::I32;
  else
    throw InputError("--dtype " + dtype + ": expected uint16 or int32");
  opt.extensions = split_extensions(vm["extensions"].as<std::string>());
  opt.max_bytes = vm["max-bytes"].as<uint64_t>();

  const CorpusSummary s = build_corpus(opt);
  std::cout << fmt::format(
      "data build: {} documents, {} tokens ({} bytes{}), {} skipped ({} binary, {} unreadable, {} empty) -> {}, {}\n",
      s.documents, s.tokens, s.bytes, s.truncated ? ", stopped at --max-bytes" : "", s.skipped(),
      s.skipped_binary, s.skipped_unreadable, s.skipped_empty, s.bin_path, s.idx_path);
  return 0;
}

}  // namespace minipuzzle::cli
