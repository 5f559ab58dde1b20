// Test support for tests/data/test_megatron_format.py: drives our reader,
// builder, corpus builder and window sampler from Python.
//
//   dataset_tool dump PREFIX                 -> JSON {dtype, lengths, document_index, sequences, flat}
//   dataset_tool write PREFIX DTYPE          <- JSON list of token lists on stdin
//   dataset_tool build PREFIX DTYPE MAX_BYTES EXTS INPUT...  -> JSON summary
//   dataset_tool windows TOTAL SEQ_LEN N SEED -> JSON list of random starts
// Exit 2 with the one-line message on InputError, like the CLI.
#include <nlohmann/json.hpp>

#include <iostream>

#include "minipuzzle/corpus_builder.h"
#include "minipuzzle/errors.h"
#include "minipuzzle/indexed_dataset.h"
#include "minipuzzle/token_windows.h"

namespace mp = minipuzzle;
using nlohmann::json;

namespace {

int dump(const std::string& prefix) {
  auto ds = mp::IndexedDataset::open(prefix);
  json lengths = json::array(), sequences = json::array();
  for (std::size_t i = 0; i < ds->num_sequences(); ++i) {
    lengths.push_back(ds->length(i));
    sequences.push_back(ds->read(i));
  }
  std::vector<int64_t> flat(ds->total_tokens());
  ds->read_flat(0, static_cast<int64_t>(flat.size()), flat.data());
  json out = {{"dtype", mp::token_dtype_name(ds->dtype())},
              {"lengths", lengths},
              {"document_index", ds->document_index()},
              {"sequences", sequences},
              {"flat", flat}};
  std::cout << out.dump() << "\n";
  return 0;
}

int write(const std::string& prefix, const std::string& dtype) {
  const json docs = json::parse(std::cin);
  mp::IndexedDatasetBuilder b(prefix, mp::token_dtype_from_name(dtype));
  for (const auto& d : docs) b.add_document(d.get<std::vector<int64_t>>());
  b.finish();
  return 0;
}

int build(char** argv, int argc) {
  mp::CorpusOptions o;
  o.out_prefix = argv[2];
  o.dtype = mp::token_dtype_from_name(argv[3]);
  o.max_bytes = std::stoull(argv[4]);
  o.extensions = mp::split_extensions(argv[5]);
  o.inputs.assign(argv + 6, argv + argc);
  const mp::CorpusSummary s = mp::build_corpus(o);
  std::cout << json{{"documents", s.documents},       {"tokens", s.tokens},
                    {"bytes", s.bytes},               {"skipped_binary", s.skipped_binary},
                    {"truncated", s.truncated}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "dump" && argc == 3) return dump(argv[2]);
    if (cmd == "write" && argc == 4) return write(argv[2], argv[3]);
    if (cmd == "build" && argc >= 7) return build(argv, argc);
    if (cmd == "windows" && argc == 6) {
      std::cout << json(mp::random_windows(std::stoull(argv[2]), std::stoll(argv[3]), std::stoull(argv[4]),
                                           std::stoull(argv[5])))
                       .dump()
                << "\n";
      return 0;
    }
  } catch (const mp::InputError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  std::cerr << "usage: dataset_tool dump PREFIX | write PREFIX DTYPE | build PREFIX DTYPE MAX_BYTES EXTS INPUT... | "
               "windows TOTAL SEQ_LEN N SEED\n";
  return 2;
}
