// Counts the host synchronisations LibTorch makes on CUDA while it lives:
// LibTorch's sync debug mode reports each (an .item(), a copy to the host, a
// copy from pageable memory) as a warning, and this handler counts those.
// The autograd engine replays the warnings of its device threads on the
// thread that called backward(), so a backward's syncs are counted too.
// Only in builds where MINIPUZZLE_TEST_CUDA_SYNCS is 1 (torch with CUDA).
#pragma once

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

namespace minipuzzle::testing {

class CudaSyncCounter : public c10::WarningHandler {
 public:
  CudaSyncCounter() : guard_(this) { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN); }
  ~CudaSyncCounter() override { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchroniz") != std::string::npos) ++count;
  }
  int64_t count = 0;

 private:
  c10::WarningUtils::WarningHandlerGuard guard_;
};

}  // namespace minipuzzle::testing
