// Text files -> Megatron dataset of byte tokens (`minipuzzle data build`).
//
// One document per file: bos + the file's bytes + eos (ByteTokenizer).
// Directories are walked recursively; the files found are sorted by path so
// the same tree always gives the same dataset. Names starting with '.'
// (.git, .cache, ...) are skipped inside directories; files named explicitly
// are always taken and are not subject to the extension filter.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "minipuzzle/indexed_dataset.h"

namespace minipuzzle {

struct CorpusOptions {
  std::vector<std::string> inputs;      // files and directories, in this order
  std::string out_prefix;               // writes out_prefix.bin / .idx
  TokenDType dtype = TokenDType::U16;
  std::vector<std::string> extensions;  // ".py" or "py"; empty = every file
  uint64_t max_bytes = 0;               // 0 = no limit; else the last document is cut to fit
};

struct CorpusSummary {
  uint64_t documents = 0;
  uint64_t tokens = 0;
  uint64_t bytes = 0;               // text bytes taken (tokens minus bos/eos)
  uint64_t skipped_binary = 0;      // a NUL byte in the first 8 KiB
  uint64_t skipped_unreadable = 0;
  uint64_t skipped_empty = 0;
  bool truncated = false;           // stopped at max_bytes
  std::string bin_path, idx_path;
  uint64_t skipped() const { return skipped_binary + skipped_unreadable + skipped_empty; }
};

// The files a build reads, in order, after the walk and the extension filter.
// InputError when `inputs` is empty or one of them does not exist.
std::vector<std::filesystem::path> list_corpus_files(const std::vector<std::string>& inputs,
                                                     const std::vector<std::string>& extensions);

// "a,b" -> {"a", "b"}; empty pieces dropped, a missing leading dot added.
std::vector<std::string> split_extensions(const std::string& csv);

// InputError: no input, missing input, output directory missing, no documents
// found (nothing is written then).
CorpusSummary build_corpus(const CorpusOptions& options);

}  // namespace minipuzzle
