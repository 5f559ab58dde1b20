#!/usr/bin/env bash
# GPU checks in one command, for a machine whose python3 already has torch
# (the device machine): builds against that LibTorch in ./build-gpu and runs
# every test there, the CUDA ones included (they skip on CPU-only machines):
# the kernel parity tests (kernels_test), then the kernels' GPU tests again
# under compute-sanitizer memcheck when it is installed, then bench_kernels
# (kernel vs LibTorch reference, TARGETS.md shapes) into bench_kernels.json.
# Logs go to $OUT (the device tool's result folder) or ./gpu-out.
#   device run:  bash tools/gpu_check.sh
# Without the compiled Boost.Program_options (absent on the device image) the
# CLI and the CLI-driven oracle tests are skipped; the model's CUDA-vs-CPU
# parity test (model_test.HybridLM.CudaForwardMatchesCpu) still runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
LOG=${OUT:-$ROOT/gpu-out}
mkdir -p "$LOG"
nvidia-smi > "$LOG/nvidia-smi.txt" 2>&1 || true
cmake -S "$ROOT" -B "$ROOT/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  -DMINIPUZZLE_PYTHON="$(command -v "$PY")" 2>&1 | tee "$LOG/configure.log" | tail -n 3
cmake --build "$ROOT/build-gpu" -j "$(nproc)" 2>&1 | tee "$LOG/build.log" | tail -n 3
cd "$ROOT/build-gpu"
rc=0
if ! grep -q "CUDA kernels: on" "$LOG/configure.log"; then
  echo "gpu_check: kernels/ was not compiled (nvcc not found, or torch without CUDA): the kernel tests skip" >&2
  rc=1
fi
ctest --output-on-failure -j 4 2>&1 | tee "$LOG/ctest.log" | tail -n 20 || rc=1
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  "$SAN" --tool memcheck --error-exitcode 9 tests/kernels/kernels_test --gtest_filter='*Cuda*:ModelOnKernels*' \
    > "$LOG/memcheck.log" 2>&1 || rc=1
  tail -n 3 "$LOG/memcheck.log"
else
  echo "compute-sanitizer not found: memcheck skipped" | tee "$LOG/memcheck.log"
fi
bench/kernels/bench_kernels --meta date="$(date -u +%F)" --meta commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --meta gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)" \
  > "$LOG/bench_kernels.json" 2> "$LOG/bench_kernels.err" || rc=1
cat "$LOG/bench_kernels.json"
exit "$rc"
