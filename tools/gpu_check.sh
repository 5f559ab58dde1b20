#!/usr/bin/env bash
# Every GPU check in one call, inside a time budget, for a machine whose
# python3 already has torch (the device machine). A session gets about 15
# minutes of device time, the machine's start included, so this is meant to
# run once: each phase has a time cap, writes its results as it goes, and a
# phase that runs out of time is cut, not the whole run.
#
#   bash tools/gpu_check.sh [--budget SECONDS] [--quick] [--phases LIST]
#   device tool: run(command="GPU_CHECK_COMMIT=<sha> bash tools/gpu_check.sh", carry=[".gpu-deps"], timeout_s=600)
#
# Phases, in order (caps in seconds, each also bounded by what is left):
#   build      against that LibTorch in ./build-gpu, kernels for this GPU only
#              (GPU_CHECK_ARCHS; by default from nvidia-smi's compute
#              capability, 9.0 -> 90a-real, else "native"), only the targets
#              run below
#   tests      the tests with CUDA cases: kernel parity, the model on kernels,
#              host-wait counts, peak memory, transformers parity on cuda (150)
#   kernels    bench_kernels: each kernel against its LibTorch reference on the
#              TARGETS.md shapes (150; --quick: small shapes)
#   job        bench/distill/bench_distill_job.py: the whole-job rows against
#              transformers + PyTorch (240; --quick: 3 steps)
# A benchmark that is cut still leaves what it measured: bench_kernels
# rewrites its file after each op ("partial": true), and the job benchmark
# prints its JSON on SIGTERM ("cut" names what is missing).
#   memcheck   the kernels' GPU tests under compute-sanitizer, with what is left
#              (at most 150; skipped under 30)
#   scale      with what is left (at most 150): bench/memory/bench_streamed_teacher.py
#              (teacher-logits streamed at half the weights against resident,
#              issue 23) and bench/distill/bench_shard_levels.py (each --shard
#              level's planner total against the allocator's peak, issue 24)
# --phases: a comma-separated subset of tests,kernels,job,memcheck,scale (the
# build always runs; on a still-warm machine it is incremental), for a second,
# shorter run of only what failed or was cut.
# --budget: the whole run, default 540 (leave the device call's timeout_s
# about a minute above it: the start and the copies back are not counted here).
#
# Results in $OUT (the device tool's result folder; at most 8 files come back)
# or ./gpu-out: summary.txt (GPU, commit, each phase's status and seconds),
# build.log, tests.log, bench_kernels.json, bench_distill_job.json,
# memcheck.log, bench_streamed_teacher.json, bench_shard_levels.json, stderr.log (the benchmarks' stderr). Exit status 0 only when
# every phase ran whole and passed.
#
# The image lacks the C++ libraries the build needs (fmt, yaml-cpp,
# GoogleTest, Eigen, nlohmann-json, Boost.Program_options): fetch their
# Debian packages here once with tools/gpu_deps.sh and carry ".gpu-deps";
# they are unpacked into a prefix under /tmp (never into /). cairo (the
# report plots) is used when the image has it and skipped otherwise
# (MINIPUZZLE_REQUIRE_CAIRO=OFF): no check here needs a plot.
# GPU_CHECK_COMMIT names the commit in the results where the copy has no .git.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
LOG=${OUT:-$ROOT/gpu-out}
BUDGET=540
QUICK=0
PHASES=tests,kernels,job,memcheck,scale
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --budget)
      [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget needs a number of seconds" >&2; exit 2; }
      BUDGET=$2
      shift ;;
    --phases)
      [[ "${2:-}" =~ ^(tests|kernels|job|memcheck|scale)(,(tests|kernels|job|memcheck|scale))*$ ]] || {
        echo "gpu_check: --phases needs a comma-separated list of tests, kernels, job, memcheck, scale" >&2; exit 2; }
      PHASES=$2
      shift ;;
    *) echo "gpu_check: unknown option $1 (expected --budget SECONDS, --quick or --phases LIST)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$LOG"
START=$(date +%s)
SUMMARY="$LOG/summary.txt"
: > "$SUMMARY"
: > "$LOG/stderr.log"
rc=0
left() { echo $((BUDGET - ($(date +%s) - START))); }
cap() { local l; l=$(left); echo $((l < $1 ? l : $1)); }  # min(cap, time left)
exec 3>&1                                       # the console, while a phase's output goes to its file
note() { echo "$*" | tee -a "$SUMMARY" >&3; }
# phase NAME CAP_SECONDS COMMAND...: runs COMMAND under min(CAP, time left),
# notes its status and seconds; a phase with under 10 s left is skipped, and
# so is one --phases leaves out.
wanted() { [[ ",$PHASES," == *",$1,"* ]]; }
phase() {
  local name=$1 limit t0 status
  if [ "$name" != build ] && ! wanted "$name"; then
    note "$name: not asked for (--phases $PHASES)"
    return
  fi
  limit=$(cap "$2")
  shift 2
  if [ "$limit" -lt 10 ]; then
    note "$name: skipped (out of budget)"
    rc=1
    return
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  status=$?
  local took=$(($(date +%s) - t0))
  if [ $status -eq 0 ]; then
    note "$name: ok (${took} s)"
  elif [ $status -eq 124 ] || [ $status -eq 137 ]; then
    note "$name: CUT after ${took} s (cap ${limit} s)"
    rc=1
  else
    note "$name: FAILED, status $status (${took} s)"
    rc=1
  fi
}

COMMIT="${GPU_CHECK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
note "gpu_check $(date -u +%FT%TZ) commit $COMMIT gpu ${GPU_NAME:-none} budget ${BUDGET} s quick $QUICK phases $PHASES"
nvidia-smi >> "$SUMMARY" 2>&1 || note "nvidia-smi: not found or failed"

PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" || {
  note "gpu_check: $PY has no torch"
  exit 2
}
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
  note "C++ libraries from .gpu-deps unpacked in $DEPS"
fi

# The GPU's architecture from nvidia-smi rather than CMake's "native", whose
# detection program must run at configure time: one failure there would cost
# the whole call. Hopper gets sm_90a, as CI compiles it.
ARCHS=${GPU_CHECK_ARCHS:-}
if [ -z "$ARCHS" ]; then
  CC="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')"
  case "$CC" in
    90) ARCHS=90a-real ;;
    [1-9][0-9] | [1-9][0-9][0-9]) ARCHS=${CC}-real ;;
    *) ARCHS=native ;;
  esac
fi
note "CUDA architectures: $ARCHS"
build() {
  cmake -S "$ROOT" -B "$ROOT/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" -DMINIPUZZLE_PYTHON="$(command -v "$PY")" -DMINIPUZZLE_REQUIRE_CAIRO=OFF || {
    echo "gpu_check: configure failed; a missing package? run tools/gpu_deps.sh here and carry .gpu-deps"
    return 2
  }
  cmake --build "$ROOT/build-gpu" -j "$(nproc)" --target kernels_test model_test distill_trainer distill_activation_memory \
    distill_teacher_cache minipuzzle bench_kernels
}
export ROOT PY PREFIX ARCHS
export -f build
phase build 100000 bash -c build > "$LOG/build.log" 2>&1
grep -E "CUDA kernels:" "$LOG/build.log" | tee -a "$SUMMARY"
if ! grep -q "CUDA kernels: on" "$LOG/build.log"; then
  note "kernels/ was not compiled (nvcc not found, or torch without CUDA): the kernel tests would skip"
  tail -n 40 "$LOG/build.log"
  exit 1
fi
tail -n 2 "$LOG/build.log"
cd "$ROOT/build-gpu" || exit 2

gpu_tests() {
  # Every gtest case with CUDA work has Cuda (or ModelOnKernels) in its name.
  ctest --output-on-failure -j 4 --timeout 120 -R 'Cuda|ModelOnKernels|KernelDispatch'
  local a=$?
  MINIPUZZLE_BIN="$ROOT/build-gpu/bin/minipuzzle" MINIPUZZLE_SOURCE_DIR="$ROOT" PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider -k cuda "$ROOT/tests/oracle/test_forward_parity.py"
  local b=$?
  return $((a != 0 || b != 0))
}
export -f gpu_tests
phase tests 150 bash -c gpu_tests > "$LOG/tests.log" 2>&1
grep -E "tests passed|Failed|\*\*\*|passed|failed" "$LOG/tests.log" | grep -v "Skipped" | tail -n 12

# The benches record date, commit and machine themselves; a copy without
# .git names its commit this way.
export MINIPUZZLE_COMMIT="$COMMIT"
BENCH_ARGS=()
[ "$QUICK" = 1 ] && BENCH_ARGS+=(--quick)
# --out: rewritten after each op, so a cut run keeps the ops it finished ("partial": true).
phase kernels 150 bench/kernels/bench_kernels "${BENCH_ARGS[@]}" --out "$LOG/bench_kernels.json" \
  > /dev/null 2>> "$LOG/stderr.log"
STEPS=10
[ "$QUICK" = 1 ] && STEPS=3
phase job 240 "$PY" "$ROOT/bench/distill/bench_distill_job.py" --bin bin/minipuzzle --steps "$STEPS" \
  > "$LOG/bench_distill_job.json" 2>> "$LOG/stderr.log"

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if ! wanted memcheck; then
  note "memcheck: not asked for (--phases $PHASES)"
elif [ -z "$SAN" ]; then
  note "memcheck: compute-sanitizer not found, skipped"
  echo "compute-sanitizer not found" > "$LOG/memcheck.log"
elif [ "$(left)" -lt 30 ]; then
  note "memcheck: skipped (out of budget)"
  rc=1
else
  phase memcheck 150 "$SAN" --tool memcheck --error-exitcode 9 tests/kernels/kernels_test \
    --gtest_filter='*Cuda*:ModelOnKernels*' > "$LOG/memcheck.log" 2>&1
  tail -n 3 "$LOG/memcheck.log"
fi
scale() {
  local windows=128 steps=4 a b
  [ "$QUICK" = 1 ] && windows=32 && steps=2
  "$PY" "$ROOT/bench/memory/bench_streamed_teacher.py" --bin bin/minipuzzle --windows "$windows" \
    > "$LOG/bench_streamed_teacher.json" 2>> "$LOG/stderr.log"
  a=$?
  "$PY" "$ROOT/bench/distill/bench_shard_levels.py" --bin bin/minipuzzle --steps "$steps" \
    > "$LOG/bench_shard_levels.json" 2>> "$LOG/stderr.log"
  b=$?
  return $((a != 0 || b != 0))
}
export LOG QUICK
export -f scale
phase scale 150 bash -c scale
note "gpu_check: $(($(date +%s) - START)) s in all, status $rc"
cat "$SUMMARY" | grep -E "^(build|tests|kernels|job|memcheck|scale|gpu_check)"
exit "$rc"
