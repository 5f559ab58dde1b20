#include "minipuzzle/corpus_builder.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>

#include "minipuzzle/byte_tokenizer.h"
#include "minipuzzle/errors.h"

namespace minipuzzle {
namespace fs = std::filesystem;

namespace {

// Same rule as git and grep: text files have no NUL bytes near the start.
constexpr std::size_t kBinaryProbe = 8192;

std::string normalise_extension(std::string e) {
  if (!e.empty() && e[0] != '.') e.insert(e.begin(), '.');
  return e;
}

bool hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

enum class ReadResult { Ok, Unreadable };

ReadResult read_whole(const fs::path& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ReadResult::Unreadable;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) return ReadResult::Unreadable;
  return ReadResult::Ok;
}

}  // namespace

std::vector<std::string> split_extensions(const std::string& csv) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= csv.size()) {
    std::size_t comma = csv.find(',', at);
    if (comma == std::string::npos) comma = csv.size();
    std::string piece = csv.substr(at, comma - at);
    piece.erase(0, piece.find_first_not_of(" \t"));
    piece.erase(piece.find_last_not_of(" \t") + 1);
    if (!piece.empty()) out.push_back(normalise_extension(piece));
    at = comma + 1;
  }
  return out;
}

std::vector<fs::path> list_corpus_files(const std::vector<std::string>& inputs,
                                        const std::vector<std::string>& extensions) {
  if (inputs.empty()) throw InputError("no input given (pass files or directories with --input)");
  std::vector<std::string> exts;
  for (const auto& e : extensions) exts.push_back(normalise_extension(e));
  auto wanted = [&](const fs::path& p) {
    return exts.empty() || std::find(exts.begin(), exts.end(), p.extension().string()) != exts.end();
  };

  std::vector<fs::path> files;
  std::set<fs::path> seen;  // an input named twice (or inside another) is read once
  auto take = [&](const fs::path& p) {
    std::error_code ec;
    fs::path key = fs::weakly_canonical(p, ec);
    if (ec) key = p;
    if (seen.insert(key).second) files.push_back(p);
  };
  for (const auto& input : inputs) {
    std::error_code ec;
    const fs::path root(input);
    if (!fs::exists(root, ec)) throw InputError(input + ": input not found");
    if (!fs::is_directory(root, ec)) {
      take(root);
      continue;
    }
    std::vector<fs::path> found;
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) throw InputError(input + ": cannot list directory: " + ec.message());
    for (; it != end; it.increment(ec)) {
      if (ec) break;  // a directory vanished or became unreadable mid-walk: keep what we have
      const fs::path& p = it->path();
      if (hidden(p)) {
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(ec) && wanted(p)) found.push_back(p);
    }
    // Sort on the generic string so the order does not depend on the
    // filesystem's directory order.
    std::sort(found.begin(), found.end(),
              [](const fs::path& a, const fs::path& b) { return a.generic_string() < b.generic_string(); });
    for (const auto& p : found) take(p);
  }
  return files;
}

CorpusSummary build_corpus(const CorpusOptions& options) {
  const std::vector<fs::path> files = list_corpus_files(options.inputs, options.extensions);
  const fs::path prefix(options.out_prefix);
  if (options.out_prefix.empty() || prefix.filename().empty())
    throw InputError("--out '" + options.out_prefix + "': expected a path prefix such as data/corpus");
  const fs::path dir = prefix.parent_path();
  std::error_code ec;
  if (!dir.empty() && !fs::is_directory(dir, ec))
    throw InputError("--out " + options.out_prefix + ": output directory " + dir.string() + " does not exist");

  CorpusSummary summary;
  summary.bin_path = options.out_prefix + ".bin";
  summary.idx_path = options.out_prefix + ".idx";
  // The builder (and its temporary .bin) starts at the first document, so a
  // build that finds no text leaves nothing behind.
  std::unique_ptr<IndexedDatasetBuilder> builder;
  std::string text;
  for (const auto& file : files) {
    if (options.max_bytes != 0 && summary.bytes >= options.max_bytes) {
      summary.truncated = true;
      break;
    }
    if (read_whole(file, text) != ReadResult::Ok) {
      ++summary.skipped_unreadable;
      continue;
    }
    if (text.empty()) {
      ++summary.skipped_empty;
      continue;
    }
    if (text.find('\0') < kBinaryProbe) {
      ++summary.skipped_binary;
      continue;
    }
    if (options.max_bytes != 0 && summary.bytes + text.size() > options.max_bytes) {
      text.resize(options.max_bytes - summary.bytes);
      summary.truncated = true;
    }
    if (!builder) builder = std::make_unique<IndexedDatasetBuilder>(options.out_prefix, options.dtype);
    const std::vector<int64_t> tokens = ByteTokenizer::encode_document(text);
    builder->add_document(tokens);
    ++summary.documents;
    summary.tokens += tokens.size();
    summary.bytes += text.size();
  }
  if (!builder) {
    std::string where = options.inputs.front() + (options.inputs.size() > 1 ? " and the other inputs" : "");
    std::string exts;
    for (const auto& e : options.extensions) exts += (exts.empty() ? "" : ",") + normalise_extension(e);
    throw InputError("no documents found in " + where + " (" + std::to_string(files.size()) + " files seen" +
                     (exts.empty() ? "" : " with --extensions " + exts) + ", " + std::to_string(summary.skipped()) +
                     " skipped as binary, unreadable or empty)");
  }
  builder->finish();
  return summary;
}

}  // namespace minipuzzle
