#include "cli_common.h"

#include <iostream>

#include "minipuzzle/errors.h"

namespace minipuzzle::cli {

bool parse_args(const std::string& usage, const std::vector<std::string>& args,
                po::options_description& options, const po::positional_options_description& positional,
                po::variables_map& vm) {
  options.add_options()("help,h", "show this help");
  try {
    po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
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

void require(const po::variables_map& vm, const char* name, const std::string& usage) {
  // Errors are one line: the usage's first line is enough (--help has the rest).
  if (!vm.count(name))
    throw InputError(std::string("missing ") + name + "; usage: " + usage.substr(0, usage.find('\n')) +
                     (usage.find('\n') == std::string::npos ? "" : " ... (see --help)"));
}

}  // namespace minipuzzle::cli
