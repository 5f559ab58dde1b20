// Runs our CUDA kernel bodies (kernels/*_kernels.cuh) on the CPU, so their
// index arithmetic, reductions, warp shuffles and atomics are tested in every
// build, GPU or not. Host-only (g++); include before the kernel headers.
//
// Model: the blocks of a launch run one after another, in a shuffled order
// (block_order below); the threads of a block run as std::threads (one pool
// per launch), each with its threadIdx. __syncthreads() is a barrier over the
// block, __shfl_xor_sync() an exchange through a per-warp buffer between two
// barriers over the warp, __shared__ variables are function statics (one live
// block at a time shares them, as on a GPU), atomicAdd holds a lock. A thread
// that returns leaves the barriers (a finished lane). Under ThreadSanitizer
// (kernels_racecheck_test) a race between a block's threads is reported
// whatever order they happen to run in: the barriers are the only
// synchronization TSan sees. A block that depends on another block of its
// launch having run first fails in some shuffled order. What it cannot show:
// performance, memory coalescing, register pressure (see
// test_kernel_resources.py), and races between blocks that run at once.
#pragma once

#ifdef __CUDACC__
#error "cuda_emulator.h is for host compilers"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace cuda_emulator {

// A reusable barrier that threads can leave for good (C++17: no std::barrier).
class Barrier {
 public:
  explicit Barrier(int expected) : expected_(expected) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t gen = generation_;
    if (++arrived_ >= expected_) {
      release();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen; });
  }
  void leave() {
    std::lock_guard<std::mutex> lock(m_);
    --expected_;
    if (expected_ > 0 && arrived_ >= expected_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int expected_, arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Warp {
  explicit Warp(int lanes) : barrier(lanes) {}
  Barrier barrier;
  unsigned char slots[32][8] = {};
};

struct Block {
  Block(int threads) : barrier(threads) {
    for (int w = 0; w * 32 < threads; ++w) warps.push_back(std::make_unique<Warp>(std::min(32, threads - w * 32)));
  }
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local uint3 thread_index{0, 0, 0};
inline thread_local uint3 block_index{0, 0, 0};
inline thread_local Block* current_block = nullptr;
inline dim3 block_dim{1, 1, 1}, grid_dim{1, 1, 1};
inline std::mutex atomic_lock;
inline std::vector<unsigned char> dynamic_shared_memory;

inline void syncthreads() { current_block->barrier.arrive_and_wait(); }

template <typename T>
T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  Warp& w = *current_block->warps[thread_index.x / 32];
  const unsigned lane = thread_index.x % 32;
  std::memcpy(w.slots[lane], &v, sizeof(T));
  w.barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, w.slots[lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
  w.barrier.arrive_and_wait();
  return out;
}

// The order the blocks of a launch run in. A GPU gives no order, and one
// kernel whose block reads what another block of the same launch writes
// passes in index order when the writer has the lower index. So each launch
// runs its blocks in a shuffled order, fixed by a launch counter (a rerun
// repeats it); MINIPUZZLE_EMULATOR_BLOCK_ORDER=in_order runs them in index
// order, for debugging.
inline std::vector<uint64_t> block_order(uint64_t blocks) {
  static uint64_t launches = 0;
  static const bool in_order = [] {
    const char* v = std::getenv("MINIPUZZLE_EMULATOR_BLOCK_ORDER");
    return v != nullptr && std::string(v) == "in_order";
  }();
  std::vector<uint64_t> order(blocks);
  for (uint64_t b = 0; b < blocks; ++b) order[b] = b;
  if (in_order) return order;
  // Fisher-Yates on splitmix64: the same order on every platform (std::shuffle's is not).
  uint64_t state = 0x9e3779b97f4a7c15ull * ++launches;
  const auto next = [&state] {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  for (uint64_t i = blocks; i > 1; --i) std::swap(order[i - 1], order[next() % i]);
  return order;
}

// kernel<<<grid, threads, shared_bytes>>>(args...) for 1-D blocks. One pool of threads per
// launch runs every block in turn (a gate between blocks), since creating
// threads dominates on small machines.
template <typename... Params, typename... Args>
void launch_with_shared(void (*kernel)(Params...), dim3 grid, unsigned threads, size_t shared_bytes, Args... args) {
  dynamic_shared_memory.assign(shared_bytes, 0xff);
  block_dim = dim3(threads, 1, 1);
  grid_dim = grid;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const std::vector<uint64_t> order = block_order(blocks);
  Barrier gate(static_cast<int>(threads) + 1);
  std::unique_ptr<Block> block;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (uint64_t i = 0; i < blocks; ++i) {
        gate.arrive_and_wait();  // the block is set up
        const uint64_t b = order[i];
        thread_index = uint3{t, 0, 0};
        block_index = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                            static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
        current_block = block.get();
        kernel(args...);
        current_block->warps[t / 32]->barrier.leave();
        current_block->barrier.leave();
        gate.arrive_and_wait();  // every thread of the block is done
      }
    });
  for (uint64_t b = 0; b < blocks; ++b) {
    block = std::make_unique<Block>(static_cast<int>(threads));
    // A GPU block's shared memory starts as garbage: all-ones bytes (NaN as
    // a float, ~0 as an integer) make a read before the block's own write
    // fail here rather than see zeros or the last block's values.
    std::fill(dynamic_shared_memory.begin(), dynamic_shared_memory.end(), static_cast<unsigned char>(0xff));
    gate.arrive_and_wait();
    gate.arrive_and_wait();
  }
  for (auto& th : pool) th.join();
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, unsigned threads, Args... args) {
  launch_with_shared(kernel, grid, threads, 0, args...);
}

}  // namespace cuda_emulator

// The CUDA built-ins the kernels use.
#undef __global__
#define __global__
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#define threadIdx (::cuda_emulator::thread_index)
#define blockIdx (::cuda_emulator::block_index)
#define blockDim (::cuda_emulator::block_dim)
#define gridDim (::cuda_emulator::grid_dim)
#define __syncthreads() ::cuda_emulator::syncthreads()
template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
  return ::cuda_emulator::shfl_xor(v, lane_mask);
}
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> lock(::cuda_emulator::atomic_lock);
  const float old = *p;
  *p = old + v;
  return old;
}
inline unsigned atomicOr(unsigned* p, unsigned v) {
  std::lock_guard<std::mutex> lock(::cuda_emulator::atomic_lock);
  const unsigned old = *p;
  *p = old | v;
  return old;
}
#define MINIPUZZLE_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::cuda_emulator::dynamic_shared_memory.data())
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
using std::max;
using std::min;
