// One thread block's 64 x 64 tile of C = A B on tensor cores (mma_tile.cuh),
// with A [M x K] and B [K x N] produced element by element by loader functors
// (so scales, decays and masks are applied while staging, and no operand is
// ever written out). 128 threads = 4 warps, each owning a 32 x 32 quarter.
//
// Staging: K in slabs of 32; each operand value v (fp32) is rounded to the
// 16-bit type T. An operand that is not exact in T (a product with a decay,
// an fp32 state or gradient) is split, v = hi + lo with hi = T(v) and lo =
// T(v - hi), and the product summed as hi.hi + hi.lo + lo.hi: about 16
// significant bits per operand for bf16 instead of 8, at two or three MMAs
// instead of one. Operands exact in T (x, B, C as the model holds them) pass
// unsplit.
#pragma once

#include <type_traits>

#include "device_math.cuh"
#include "mma_tile.cuh"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kGemmTileM = 64, kGemmTileN = 64, kGemmSlabK = 32, kGemmThreads = 128;
// Leading dimensions padded off multiples of 128 bytes (shared-memory banks);
// still multiples of 8 elements, as wmma needs.
constexpr int kGemmLdA = kGemmSlabK + 8, kGemmLdB = kGemmTileN + 8, kGemmLdC = kGemmTileN + 4;

// Operand flags (a bitmask): split into hi + lo; stage with consecutive
// threads on consecutive k (the operand is contiguous along K in memory)
// rather than along M or N.
constexpr int kGemmSplitA = 1, kGemmSplitB = 2, kGemmAKFast = 4, kGemmBKFast = 8;

template <typename T>
struct alignas(32) GemmShared {
  T a[2][kGemmTileM * kGemmLdA];  // [hi, lo] of the A slab, [64 x 32]
  T b[2][kGemmSlabK * kGemmLdB];  // [hi, lo] of the B slab, [32 x 64]
  float c[kGemmTileM * kGemmLdC];
};

// Number of 64-wide tiles covering n.
__host__ __device__ inline int64_t gemm_tiles(int64_t n) { return (n + kGemmTileN - 1) / kGemmTileN; }

// Stages the [Rows x Cols] piece of an operand at (r0, c0), zeros outside
// [rows x cols]; load(r, c) gives the value at row r, column c.
template <typename T, int Rows, int Cols, int Ld, bool Split, bool ColsFastest, typename Load>
__device__ __forceinline__ void gemm_stage(T* hi, T* lo, int64_t r0, int64_t c0, int64_t rows, int64_t cols,
                                           Load& load) {
  for (int e = threadIdx.x; e < Rows * Cols; e += blockDim.x) {
    const int r = ColsFastest ? e / Cols : e % Rows, c = ColsFastest ? e % Cols : e / Rows;
    const float v = r0 + r < rows && c0 + c < cols ? load(r0 + r, c0 + c) : 0.0f;
    const T h = from_f32<T>(v);
    hi[r * Ld + c] = h;
    if (Split) lo[r * Ld + c] = from_f32<T>(v - to_f32(h));
  }
}

// No row epilogue (block_gemm's default).
struct GemmNoRows {
  __device__ void operator()(int64_t, const float*, int64_t) const {}
};

// The tile of C at rows [m0, m0 + 64), columns [n0, n0 + 64): calls
// store(i, j, value) for every (i < M, j < N) of it, then, if given,
// rows(i, values, count) once per row i < M of the tile, with its `count`
// values (columns n0...), one thread per row: reductions along a row in a
// fixed order. Every thread of the block must call it (it synchronizes the
// block).
template <typename T, int Flags, typename LoadA, typename LoadB, typename Store, typename Rows = GemmNoRows>
__device__ void block_gemm(int64_t m0, int64_t n0, int64_t M, int64_t N, int64_t K, LoadA load_a, LoadB load_b,
                           Store store, Rows rows = Rows()) {
  constexpr bool split_a = Flags & kGemmSplitA, split_b = Flags & kGemmSplitB;
  __shared__ GemmShared<T> sm;
  const int warp = threadIdx.x / 32, wm = warp / 2 * 32, wn = warp % 2 * 32;
  MmaAcc<T> acc[2][2];
  for (auto& row : acc)
    for (auto& a : row) mma_zero(a);
  for (int64_t k0 = 0; k0 < K; k0 += kGemmSlabK) {
    gemm_stage<T, kGemmTileM, kGemmSlabK, kGemmLdA, split_a, (Flags & kGemmAKFast) != 0>(sm.a[0], sm.a[1], m0, k0, M, K,
                                                                                         load_a);
    gemm_stage<T, kGemmSlabK, kGemmTileN, kGemmLdB, split_b, (Flags & kGemmBKFast) == 0>(sm.b[0], sm.b[1], k0, n0, K, N,
                                                                                         load_b);
    __syncthreads();
    for (int kk = 0; kk < kGemmSlabK; kk += kMmaTile)
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
          const int a_at = (wm + i * kMmaTile) * kGemmLdA + kk, b_at = kk * kGemmLdB + wn + j * kMmaTile;
          mma_step(acc[i][j], sm.a[0] + a_at, kGemmLdA, sm.b[0] + b_at, kGemmLdB);
          if (split_a) mma_step(acc[i][j], sm.a[1] + a_at, kGemmLdA, sm.b[0] + b_at, kGemmLdB);
          if (split_b) mma_step(acc[i][j], sm.a[0] + a_at, kGemmLdA, sm.b[1] + b_at, kGemmLdB);
        }
    __syncthreads();  // the slab is read before the next one overwrites it
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      mma_store(sm.c + (wm + i * kMmaTile) * kGemmLdC + wn + j * kMmaTile, kGemmLdC, acc[i][j]);
  __syncthreads();
  for (int e = threadIdx.x; e < kGemmTileM * kGemmTileN; e += blockDim.x) {
    const int i = e / kGemmTileN, j = e % kGemmTileN;
    if (m0 + i < M && n0 + j < N) store(m0 + i, n0 + j, sm.c[i * kGemmLdC + j]);
  }
  if constexpr (!std::is_same<Rows, GemmNoRows>::value) {
    const int i = threadIdx.x;
    const int64_t count = N - n0 < kGemmTileN ? N - n0 : kGemmTileN;
    if (i < kGemmTileM && m0 + i < M) rows(m0 + i, sm.c + i * kGemmLdC, count);
  }
  __syncthreads();  // sm.c is read before a later call overwrites it
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
