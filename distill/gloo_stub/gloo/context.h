// See README.md: declarations only, for torch's ProcessGroupGloo.hpp.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);  // never defined: not called by us
};
}  // namespace gloo
