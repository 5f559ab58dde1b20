#!/usr/bin/env bash
# GPU checks in one command, for a machine whose python3 already has torch
# (the device machine): builds against that LibTorch in ./build-gpu and runs
# every test there, the CUDA ones included (they skip on CPU-only machines):
# the kernel parity tests (kernels_test), then the kernels' GPU tests again
# under compute-sanitizer memcheck when it is installed, then bench_kernels
# (kernel vs LibTorch reference, TARGETS.md shapes) into bench_kernels.json,
# then bench/distill/bench_distill_job.py (the whole-job rows: distillation
# step and teacher forward vs transformers + PyTorch) into bench_distill_job.json.
# Logs go to $OUT (the device tool's result folder) or ./gpu-out.
#   device run:  bash tools/gpu_check.sh
# The image lacks the C++ libraries the build needs (fmt, yaml-cpp,
# GoogleTest, Eigen, nlohmann-json, Boost.Program_options): fetch their
# Debian packages here once with tools/gpu_deps.sh and carry ".gpu-deps";
# they are unpacked into a prefix under /tmp (never into /).
#   --quick  only the tests that touch CUDA, and bench_kernels --quick
#   --job    only bench_distill_job.py (a second call: ./build-gpu is kept
#            while the machine stays warm, so the build is incremental)
# GPU_CHECK_COMMIT names the commit in the results where the copy has no .git.
# Kernels are compiled for this machine's GPU only (GPU_CHECK_ARCHS,
# default "native").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
LOG=${OUT:-$ROOT/gpu-out}
MODE=all
case "${1:-}" in
  --quick) MODE=quick ;;
  --job) MODE=job ;;
  "") ;;
  *) echo "gpu_check: unknown option ${1} (expected --quick or --job)" >&2; exit 2 ;;
esac
mkdir -p "$LOG"
nvidia-smi > "$LOG/nvidia-smi.txt" 2>&1 || true
PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
if ls "$ROOT"/.gpu-deps/*.deb > /dev/null 2>&1; then
  DEPS=/tmp/minipuzzle-gpu-deps
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  for f in "$ROOT"/.gpu-deps/*.deb; do
    if command -v dpkg > /dev/null; then
      dpkg -x "$f" "$DEPS"
    else  # a .deb is an ar archive holding data.tar.*
      (cd "$DEPS" && ar x "$f" && tar xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary)
    fi
  done
  PREFIX="$PREFIX;$DEPS/usr"
  echo "gpu_check: C++ libraries from .gpu-deps unpacked in $DEPS"
fi
cmake -S "$ROOT" -B "$ROOT/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_CUDA_ARCHITECTURES="${GPU_CHECK_ARCHS:-native}" \
  -DMINIPUZZLE_PYTHON="$(command -v "$PY")" > "$LOG/configure.log" 2>&1 || {
  tail -n 30 "$LOG/configure.log"
  echo "gpu_check: configure failed; a missing package? run tools/gpu_deps.sh here and carry .gpu-deps" >&2
  exit 2
}
tail -n 3 "$LOG/configure.log"
# --quick and --job build only what they run (device time is short).
TARGETS=()
[ "$MODE" = quick ] && TARGETS=(--target kernels_test model_test distill_kd_loss distill_trainer distill_teacher_cache
  minipuzzle bench_kernels)
[ "$MODE" = job ] && TARGETS=(--target minipuzzle)
cmake --build "$ROOT/build-gpu" -j "$(nproc)" "${TARGETS[@]}" > "$LOG/build.log" 2>&1 || {
  tail -n 40 "$LOG/build.log"
  exit 1
}
tail -n 2 "$LOG/build.log"
cd "$ROOT/build-gpu"
rc=0
if ! grep -q "CUDA kernels: on" "$LOG/configure.log"; then
  echo "gpu_check: kernels/ was not compiled (nvcc not found, or torch without CUDA): the kernel tests skip" >&2
  rc=1
fi
COMMIT="${GPU_CHECK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
if [ "$MODE" != job ]; then
  # The tests with CUDA cases: kernels, the model and eval, the trainer, the KD loss, the teacher cache
  # (with the host-wait counts), parity with transformers.
  GPU_TESTS='kernels_test|model_test|distill_trainer|distill_kd_loss|distill_teacher_cache|oracle_forward_parity'
  if [ "$MODE" = quick ]; then
    ctest --output-on-failure -j 4 -R "$GPU_TESTS" > "$LOG/ctest.log" 2>&1 || rc=1
  else
    ctest --output-on-failure -j 8 > "$LOG/ctest.log" 2>&1 || rc=1
  fi
  grep -E "tests passed|Failed|\*\*\*" "$LOG/ctest.log" | grep -v "Skipped" | tail -n 20 || true
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -n "$SAN" ]; then
    timeout $([ "$MODE" = quick ] && echo 150 || echo 300) "$SAN" --tool memcheck --error-exitcode 9 \
      tests/kernels/kernels_test --gtest_filter='*Cuda*:ModelOnKernels*' > "$LOG/memcheck.log" 2>&1 || rc=1
    tail -n 3 "$LOG/memcheck.log"
  else
    echo "compute-sanitizer not found: memcheck skipped" | tee "$LOG/memcheck.log"
  fi
  BENCH_ARGS=()
  [ "$MODE" = quick ] && BENCH_ARGS+=(--quick)
  bench/kernels/bench_kernels "${BENCH_ARGS[@]}" --meta date="$(date -u +%F)" --meta commit="$COMMIT" \
    --meta gpu="$GPU_NAME" > "$LOG/bench_kernels.json" 2> "$LOG/bench_kernels.err" || rc=1
  cat "$LOG/bench_kernels.json"
fi
if [ "$MODE" != quick ]; then
  # The whole-job rows: distillation step and teacher forward on the TARGETS.md
  # models, ours (SSD kernels off and on) against transformers + PyTorch.
  timeout 540 "$PY" "$ROOT/bench/distill/bench_distill_job.py" --bin bin/minipuzzle --steps 10 \
    --meta date="$(date -u +%F)" --meta commit="$COMMIT" --meta gpu="$GPU_NAME" \
    > "$LOG/bench_distill_job.json" 2> "$LOG/bench_distill_job.err" || rc=1
  cat "$LOG/bench_distill_job.json"
fi
exit "$rc"
