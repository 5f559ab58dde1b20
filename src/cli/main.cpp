// `minipuzzle`: one binary, one command per pipeline step.
// Exit codes: 0 ok, 1 runtime failure, 2 bad input or usage.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <csignal>
#include <iostream>
#include <string>

#include "commands.h"
#include "minipuzzle/errors.h"

namespace {

using minipuzzle::cli::Args;

struct CommandEntry {
  const char* name;
  int (*run)(const Args&);
  const char* summary;
};

const CommandEntry kCommands[] = {
    {"compress", minipuzzle::cli::cmd_compress, "the whole chain from one YAML job: score, search, prune, distill, export, report"},
    {"inspect", minipuzzle::cli::cmd_inspect, "architecture, parameters per layer type, memory at a precision"},
    {"eval", minipuzzle::cli::cmd_eval, "LM loss, perplexity and next-token accuracy on a dataset"},
    {"data build", minipuzzle::cli::cmd_data_build, "text files -> Megatron indexed dataset (byte tokens)"},
    {"score", minipuzzle::cli::cmd_score, "importance of every layer, FFN neuron, channel and head on calibration data"},
    {"distill", minipuzzle::cli::cmd_distill, "train a (pruned) student on a teacher's logits; checkpoints, resume"},
    {"teacher-logits", minipuzzle::cli::cmd_teacher_logits, "offline teacher: cache its top-k logits over the windows distill will read"},
    {"train", minipuzzle::cli::cmd_train, "train a model on plain next-token loss (a teacher, or a from-scratch baseline)"},
    {"export", minipuzzle::cli::cmd_export, "write a checkpoint in Hub layout that transformers loads (dtype, shards)"},
    {"search", minipuzzle::cli::cmd_search, "the best architectures under a memory budget (proxy score, optionally ranked on data)"},
    {"prune", minipuzzle::cli::cmd_prune, "slice a checkpoint's layers and widths to a search candidate or --set sizes"},
    {"logits", minipuzzle::cli::cmd_logits, "(test support) write a model's logits for token ids"},
};

void print_usage(std::ostream& os) {
  os << "usage: minipuzzle <command> [options]   (minipuzzle <command> --help for details)\n\ncommands:\n";
  std::size_t width = 0;
  for (const auto& c : kCommands) width = std::max(width, std::strlen(c.name));
  for (const auto& c : kCommands)
    os << "  " << c.name << std::string(width + 2 - std::strlen(c.name), ' ') << c.summary << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  // A file-size limit (ulimit -f) is a full disk by another name: let the
  // write fail with EFBIG and be reported like ENOSPC (one line, the partial
  // output removed) instead of the process dying of SIGXFSZ mid-file.
  std::signal(SIGXFSZ, SIG_IGN);
  Args rest(argv + 1, argv + argc);
  if (rest.empty()) {
    std::cerr << "minipuzzle: expected a command (run minipuzzle --help for the list)\n";
    return 2;
  }
  if (rest[0] == "--help" || rest[0] == "-h" || rest[0] == "help") {
    print_usage(std::cout);
    return 0;
  }
  const CommandEntry* found = nullptr;
  size_t consumed = 0;
  for (const auto& c : kCommands) {
    std::string name = c.name;
    size_t space = name.find(' ');
    if (space == std::string::npos) {
      if (rest[0] == name) { found = &c; consumed = 1; }
    } else if (rest[0] == name.substr(0, space) && rest.size() > 1 && rest[1] == name.substr(space + 1)) {
      found = &c;
      consumed = 2;
    }
  }
  if (!found) {
    if (rest[0] == "data") {
      // `data` only groups its subcommands: its help lists them.
      const bool help = rest.size() > 1 && (rest[1] == "--help" || rest[1] == "-h");
      (help ? std::cout : std::cerr) << (help ? "usage: minipuzzle data <subcommand> [options]\n\nsubcommands:\n  build  "
                                              : "minipuzzle data: expected a subcommand: build (see minipuzzle data --help)\n");
      if (help) {
        for (const auto& c : kCommands)
          if (std::string(c.name) == "data build") std::cout << c.summary << "\n";
        return 0;
      }
      return 2;
    }
      std::cerr << "minipuzzle: unknown command '" << rest[0] << "' (run minipuzzle --help)\n";
    return 2;
  }
  Args args(rest.begin() + consumed, rest.end());
  try {
    return found->run(args);
  } catch (const minipuzzle::InputError& e) {
    std::cerr << "minipuzzle " << found->name << ": error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "minipuzzle " << found->name << ": failed: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "minipuzzle " << found->name << ": failed: " << e.what() << "\n";
    return 1;
  }
}
