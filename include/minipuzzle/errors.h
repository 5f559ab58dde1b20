// Error kinds that decide the process exit code.
//
// InputError: the user gave us something wrong (file, flag, config, budget).
// The CLI prints its message as one line and exits 2. Everything else that
// escapes a command is a runtime failure (exit 1).
#pragma once

#include <stdexcept>
#include <string>

namespace minipuzzle {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace minipuzzle
