#include "cli_common.h"

#include <filesystem>
#include <iostream>

#include "minipuzzle/errors.h"

namespace minipuzzle::cli {

namespace {

template <typename... T>
bool is_unsigned_option(const po::value_semantic* s) {
  return (dynamic_cast<const po::typed_value<T>*>(s) || ...);
}

// Boost reads "-1" into an unsigned option as 2^64 - 1 (a --windows of
// 18446744073709551615, a --max-bytes of "no limit"): refuse a sign there.
void reject_negative_unsigned(const po::parsed_options& parsed, const po::options_description& options) {
  for (const po::option& o : parsed.options) {
    if (o.string_key.empty()) continue;
    const po::option_description* d = options.find_nothrow(o.string_key, false);
    if (!d || !is_unsigned_option<unsigned char, unsigned short, unsigned int, unsigned long, unsigned long long>(
                  d->semantic().get()))
      continue;
    for (const std::string& v : o.value) {
      const auto first = v.find_first_not_of(" \t");
      if (first != std::string::npos && v[first] == '-')
        throw InputError("--" + o.string_key + ": expected a number >= 0, got '" + v + "' (see --help)");
    }
  }
}

}  // namespace

bool parse_args(const std::string& usage, const std::vector<std::string>& args,
                po::options_description& options, const po::positional_options_description& positional,
                po::variables_map& vm) {
  options.add_options()("help,h", "show this help");
  try {
    const po::parsed_options parsed = po::command_line_parser(args).options(options).positional(positional).run();
    reject_negative_unsigned(parsed, options);
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << "usage: " << usage << "\n\n" << options << "\n";
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw InputError(std::string(e.what()) + " (see --help)");
  }
  return true;
}

void check_output_file(const std::string& path, const char* flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  if (p.empty()) throw InputError(std::string(flag) + ": empty path");
  if (fs::is_directory(p, ec)) throw InputError(std::string(flag) + " " + path + ": is a directory, expected a file name");
  const fs::path dir = p.parent_path();
  if (!dir.empty() && !fs::is_directory(dir, ec))
    throw InputError(std::string(flag) + " " + path + ": directory " + dir.string() + " does not exist");
}

void require(const po::variables_map& vm, const char* name, const std::string& usage) {
  // Errors are one line: the usage's first line is enough (--help has the rest).
  if (!vm.count(name))
    throw InputError(std::string("missing ") + name + "; usage: " + usage.substr(0, usage.find('\n')) +
                     (usage.find('\n') == std::string::npos ? "" : " ... (see --help)"));
}

}  // namespace minipuzzle::cli
