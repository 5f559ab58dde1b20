// Counts the host synchronisations LibTorch makes on CUDA while it lives:
// LibTorch's sync debug mode reports each (an .item(), a copy to the host, a
// copy from pageable memory) as a warning, and this handler counts those.
// The autograd engine replays the warnings of its device threads on the
// thread that called backward(), so a backward's syncs are counted too.
// Only in builds where MINIPUZZLE_TEST_CUDA_SYNCS is 1 (torch with CUDA).
#pragma once

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Backtrace.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace minipuzzle::testing {

class CudaSyncCounter : public c10::WarningHandler {
 public:
  CudaSyncCounter() : guard_(this) { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN); }
  ~CudaSyncCounter() override { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchroniz") == std::string::npos) return;
    ++count;
    if (where.size() < 512) where.push_back(c10::get_backtrace(/*frames_to_skip=*/1, /*maximum_number_of_frames=*/24));
  }
  // For a failing test's message: where syncs number `from` (0-based,
  // counted from this counter's start) and after came from.
  std::string sites_since(int64_t from) const { return format_sites(where, from); }
  static std::string format_sites(const std::vector<std::string>& where, int64_t from) {
    std::string s;
    for (int64_t i = std::max<int64_t>(from, 0); i < static_cast<int64_t>(where.size()) && i < from + 4; ++i)
      s += "--- synchronisation " + std::to_string(i) + " at:\n" + where[static_cast<std::size_t>(i)] + "\n";
    return s;
  }
  int64_t count = 0;
  std::vector<std::string> where;  // backtraces of the first 512

 private:
  c10::WarningUtils::WarningHandlerGuard guard_;
};

}  // namespace minipuzzle::testing
