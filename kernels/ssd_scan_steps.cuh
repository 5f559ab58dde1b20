// The SSD's launch sequences, forward and backward: launch(kernel, grid,
// args...) runs one kernel with kSsdThreads threads per block (a <<<>>>
// launch in ssd_scan.cu, the emulator in the tests), so both run the same
// sequence. bf16 inputs run the per-chunk products on tensor cores
// (ssd_scan_tensor_core_kernels.cuh) unless shape.tensor_cores is off; fp32
// and fp16 run them on CUDA cores in fp32 (fp16 cannot hold the fp32 states
// and gradients the products also take: its range is too narrow).
#pragma once

#include <type_traits>

#include "ssd_scan_tensor_core_kernels.cuh"

// Namespace: see device_math.cuh.
namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL {

// Calls on_tensor_cores(T{}) for bf16 with shape.tensor_cores on, else
// on_cuda_cores(). on_tensor_cores is a generic lambda, so the tensor-core
// kernels are instantiated (and compiled by nvcc) for bf16 only.
template <typename T, typename OnTensorCores, typename OnCudaCores>
void ssd_either(const SsdShape& s, OnTensorCores&& on_tensor_cores, OnCudaCores&& on_cuda_cores) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if (s.tensor_cores) {
      on_tensor_cores(T{});
      return;
    }
  }
  on_cuda_cores();
}

// Grids: (chunk + chunks * sequence, head or group, output tile).
inline dim3 ssd_chunk_grid(const SsdShape& s, int64_t per_chunk, int64_t tiles = 1) {
  return dim3(static_cast<unsigned>(s.batch * ssd_chunks(s)), static_cast<unsigned>(per_chunk),
              static_cast<unsigned>(tiles));
}

// `dots`: see SsdDots (the tensor-core path only; others write y).
template <typename T, typename TD, typename Launch>
void ssd_forward_steps(const SsdShape& s, const T* x, const SsdDtIn<TD>& dt_in, const float* A, const T* B, const T* C,
                       const float* D, float* y, const SsdWorkspace& ws, Launch&& launch, SsdDots dots = {}) {
  launch(ssd_cumsum_kernel<TD>, dim3(ssd_cumsum_blocks(s)), s, dt_in, A, ws.dt, ws.cumsum);
  const float* dt = ws.dt;
  const float* cumsum = ws.cumsum;
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_chunk_state_tc_kernel<decltype(t)>, ssd_chunk_grid(s, s.heads, ssd_tiles(s.head_dim, s.state)), s, x,
               dt, B, cumsum, ws.states);
      },
      [&] { launch(ssd_chunk_state_kernel<T>, ssd_chunk_grid(s, s.heads), s, x, dt, B, cumsum, ws.states); });
  launch(ssd_state_passing_kernel, dim3(static_cast<unsigned>(s.batch), static_cast<unsigned>(s.heads)), s, cumsum,
         ws.states, false);
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_chunk_cb_tc_kernel<decltype(t)>, ssd_chunk_grid(s, s.groups, ssd_tiles(s.chunk, s.chunk)), s, B, C,
               ws.cb);
      },
      [&] { launch(ssd_chunk_cb_kernel<T>, ssd_chunk_grid(s, s.groups), s, B, C, ws.cb); });
  const float* states = ws.states;
  const float* cb = ws.cb;
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_chunk_output_tc_kernel<decltype(t)>, ssd_chunk_grid(s, s.heads, ssd_tiles(s.chunk, s.head_dim)), s,
               x, dt, C, D, cumsum, states, cb, y, dots);
      },
      [&] { launch(ssd_chunk_output_kernel<T>, ssd_chunk_grid(s, s.heads), s, x, dt, C, D, cumsum, states, cb, y); });
}

// Forward steps first, with D left out so y_ssm is the scan alone. dA, dD
// and ddt_bias must be zero.
template <typename T, typename TD, typename Launch>
void ssd_backward_steps(const SsdShape& s, const T* x, const SsdDtIn<TD>& dt_in, const float* A, const T* B, const T* C,
                        const float* D, const float* dy, float* dx, float* ddt, float* dA, float* dB, float* dC,
                        float* dD, float* ddt_bias, const SsdBackwardWorkspace& ws, Launch&& launch) {
  // The tensor-core path keeps no y_ssm: its dots come straight from the replay.
  ssd_forward_steps(s, x, dt_in, A, B, C, static_cast<const float*>(nullptr), ws.y_ssm, ws.fwd, launch,
                    SsdDots{dy, ws.yy_part});
  const float* dt = ws.fwd.dt;
  const float* cumsum = ws.fwd.cumsum;
  const float* states = ws.fwd.states;
  const float* cb = ws.fwd.cb;
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_reverse_chunk_state_tc_kernel<decltype(t)>,
               ssd_chunk_grid(s, s.heads, ssd_tiles(s.head_dim, s.state)), s, dy, C, cumsum, ws.rstates);
      },
      [&] { launch(ssd_reverse_chunk_state_kernel<T>, ssd_chunk_grid(s, s.heads), s, dy, C, cumsum, ws.rstates); });
  launch(ssd_state_passing_kernel, dim3(static_cast<unsigned>(s.batch), static_cast<unsigned>(s.heads)), s, cumsum,
         ws.rstates, true);
  const float* rstates = ws.rstates;
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_dxdt_tc_kernel<decltype(t)>, ssd_chunk_grid(s, s.heads, ssd_tiles(s.chunk, s.head_dim)), s, x, dt, B,
               D, dy, cumsum, rstates, cb, dx, ws.xd_part, ws.dyx_part);
      },
      [&] {
        launch(ssd_dxdt_kernel<T>, ssd_chunk_grid(s, s.heads), s, dt, B, D, dy, cumsum, rstates, cb, ws.dxdt, dx);
      });
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_w_tc_kernel<decltype(t)>, ssd_chunk_grid(s, s.groups, ssd_tiles(s.chunk, s.chunk)), s, x, dt, dy,
               cumsum, ws.w);
      },
      [&] { launch(ssd_w_kernel<T>, ssd_chunk_grid(s, s.groups), s, x, dt, dy, cumsum, ws.w); });
  const float* w = ws.w;
  ssd_either<T>(
      s,
      [&](auto t) {
        launch(ssd_dbdc_tc_kernel<decltype(t)>, ssd_chunk_grid(s, s.groups, 2 * ssd_tiles(s.chunk, s.state)), s, x, dt,
               B, C, dy, cumsum, states, rstates, w, dB, dC);
      },
      [&] {
        launch(ssd_dbdc_kernel<T>, ssd_chunk_grid(s, s.groups), s, x, dt, B, C, dy, cumsum, states, rstates, w, dB, dC);
      });
  ssd_either<T>(
      s,
      [&](auto) {
        launch(ssd_token_dots_from_partials_kernel, dim3(ssd_token_blocks(s)), s, dt,
               static_cast<const float*>(ws.yy_part), static_cast<const float*>(ws.xd_part),
               static_cast<const float*>(ws.dyx_part), ws.da, ws.xdot, ws.dyx);
      },
      [&] {
        launch(ssd_token_dots_kernel<T>, dim3(ssd_token_blocks(s)), s, x, dt, dy, static_cast<const float*>(ws.y_ssm),
               static_cast<const float*>(ws.dxdt), ws.da, ws.xdot, ws.dyx);
      });
  launch(ssd_decay_grad_kernel<TD>, dim3(ssd_bh_blocks(s)), s, dt, dt_in, A, static_cast<const float*>(ws.da),
         static_cast<const float*>(ws.xdot), static_cast<const float*>(ws.dyx), ddt, dA, dD, ddt_bias);
}

}  // namespace minipuzzle::kernels::MINIPUZZLE_KERNEL_DETAIL
