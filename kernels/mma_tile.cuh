// One warp's 16x16x16 tensor-core product, acc += A B, with 16-bit operands
// (__half or __nv_bfloat16) and an fp32 accumulator; A [16 x 16] and B
// [16 x 16] row-major in shared memory, leading dimensions in elements (a
// multiple of 8, rows 32-byte aligned), as wmma requires.
//
// nvcc: nvcuda::wmma (sm_80 and newer for bf16). Host compilers (the CPU
// emulation tests): the same contract in plain loops, each lane owning the
// accumulator elements lane, lane + 32, ... as a warp's lanes own theirs, so
// a lane that skipped the call or a store that missed a lane shows up.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifdef __CUDACC__
#include <mma.h>
#else
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#endif

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

constexpr int kMmaTile = 16;

#ifdef __CUDACC__

template <typename T>
struct MmaAcc {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, kMmaTile, kMmaTile, kMmaTile, float> f;
};

template <typename T>
__device__ __forceinline__ void mma_zero(MmaAcc<T>& acc) {
  nvcuda::wmma::fill_fragment(acc.f, 0.0f);
}

template <typename T>
__device__ __forceinline__ void mma_step(MmaAcc<T>& acc, const T* a, int lda, const T* b, int ldb) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, kMmaTile, kMmaTile, kMmaTile, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, kMmaTile, kMmaTile, kMmaTile, T, wmma::row_major> fb;
  wmma::load_matrix_sync(fa, a, lda);
  wmma::load_matrix_sync(fb, b, ldb);
  wmma::mma_sync(acc.f, fa, fb, acc.f);
}

// out [16 x 16] row-major fp32, ldo a multiple of 4.
template <typename T>
__device__ __forceinline__ void mma_store(float* out, int ldo, const MmaAcc<T>& acc) {
  nvcuda::wmma::store_matrix_sync(out, acc.f, ldo, nvcuda::wmma::mem_row_major);
}

#else  // the CPU emulation

template <typename T>
struct MmaAcc {
  float v[kMmaTile * kMmaTile];
};

inline int mma_lane() { return static_cast<int>(threadIdx.x % 32); }

// What wmma requires of a tile pointer and its leading dimension (elements
// of `bytes` each): 256-bit aligned, ld a multiple of 16 bytes. The device
// leaves a violation undefined; the emulation stops on it.
inline void mma_check_layout(const void* p, int ld, int bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ld * bytes) % 16 != 0) {
    std::fprintf(stderr, "mma tile: pointer %p or leading dimension %d breaks wmma's alignment\n", p, ld);
    std::abort();
  }
}

template <typename T>
inline void mma_zero(MmaAcc<T>& acc) {
  for (float& v : acc.v) v = 0.0f;
}

// Products exact in fp32 (16-bit operands), summed in fp32.
template <typename T>
inline void mma_step(MmaAcc<T>& acc, const T* a, int lda, const T* b, int ldb) {
  mma_check_layout(a, lda, sizeof(T));
  mma_check_layout(b, ldb, sizeof(T));
  for (int e = mma_lane(); e < kMmaTile * kMmaTile; e += 32) {
    const int i = e / kMmaTile, j = e % kMmaTile;
    float sum = acc.v[e];
    for (int k = 0; k < kMmaTile; ++k) sum += to_f32(a[i * lda + k]) * to_f32(b[k * ldb + j]);
    acc.v[e] = sum;
  }
}

template <typename T>
inline void mma_store(float* out, int ldo, const MmaAcc<T>& acc) {
  mma_check_layout(out, ldo, sizeof(float));
  for (int e = mma_lane(); e < kMmaTile * kMmaTile; e += 32) out[e / kMmaTile * ldo + e % kMmaTile] = acc.v[e];
}

#endif

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
