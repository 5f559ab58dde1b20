#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, `fuzz` preset: clang, ASan +
# UBSan, no LibTorch, in ./build-fuzz; idempotent) and runs each for SECONDS.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]     # default 60 s, every target
#   tools/fuzz.sh --list
#
# Targets: safetensors checkpoint_index model_config indexed_dataset
# candidates importance_scores compress_job. Each run starts from the seed corpus
# tests/fuzz/corpus/<target>/ plus the work corpus
# $MINIPUZZLE_CACHE/fuzz/<target>/ (default ~/.cache/minipuzzle/fuzz), to
# which new interesting inputs are added; crashes, leaks, timeouts and OOMs
# go to $MINIPUZZLE_CACHE/fuzz/artifacts/<target>/. Prints per target the
# executions, coverage and findings; exits 1 when a run found something.
# Reproduce a finding: build-fuzz/fuzz/fuzz_<target> ARTIFACT_FILE.
# Runs at nice 19 (MINIPUZZLE_FUZZ_NICE), one target at a time;
# MINIPUZZLE_JOBS (default 2) compile jobs; MINIPUZZLE_FUZZ_ARGS adds libFuzzer
# flags (e.g. "-fork=1 -ignore_crashes=1" to go on past a known finding).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MINIPUZZLE_CACHE:-$HOME/.cache/minipuzzle}
BUILD=$ROOT/build-fuzz
WORK=$CACHE/fuzz
ALL=(safetensors checkpoint_index model_config indexed_dataset candidates importance_scores)
[ -f "$ROOT/src/cli/compress/compress_job.cpp" ] && ALL+=(compress_job)
NICE=${MINIPUZZLE_FUZZ_NICE:-19}

if [ "${1:-}" = "--list" ]; then printf '%s\n' "${ALL[@]}"; exit 0; fi
SECONDS_EACH=60
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then SECONDS_EACH=$1; shift; fi
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || { echo "unknown target '$t' (tools/fuzz.sh --list)" >&2; exit 2; }
done
command -v clang++ >/dev/null || { echo "tools/fuzz.sh needs clang++ (apt-get install clang)" >&2; exit 2; }

export CCACHE_DIR=$CACHE/ccache
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR=$ROOT
export CCACHE_NOHASHDIR=1
cd "$ROOT"
if [ ! -f "$BUILD/build.ninja" ]; then
  nice -n 10 cmake --preset fuzz >&2
fi
nice -n 10 cmake --build "$BUILD" -j "${MINIPUZZLE_JOBS:-2}" --target fuzz_targets >&2

# The sanitizers abort on the first report so libFuzzer records the input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

summary=()
found_any=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "$WORK/artifacts/$t"
  log=$WORK/$t.log
  before=$(find "$WORK/artifacts/$t" -type f | wc -l)
  echo "== $t: ${SECONDS_EACH}s (log $log)" >&2
  set +e
  nice -n "$NICE" "$BUILD/fuzz/fuzz_$t" \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -dict="$ROOT/tests/fuzz/fuzz.dict" -print_final_stats=1 \
    -artifact_prefix="$WORK/artifacts/$t/" ${MINIPUZZLE_FUZZ_ARGS:-} \
    "$WORK/$t" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  # Plain runs end with stat:: lines; -fork runs print "#N: cov: C ft: F ..." lines.
  execs=$( (sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1) || true)
  rate=$( (sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1) || true)
  cov=$( (grep -oE '^#[0-9]+:?[[:space:]]+((DONE|REDUCE|NEW|pulse|INITED)[[:space:]]+)?cov: [0-9]+ ft: [0-9]+' "$log" || true) |
        tail -n 1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+)/cov \1, ft \2/')
  if [ -z "$execs" ]; then
    execs=$( (grep -oE '^#[0-9]+: cov:' "$log" || true) | tail -n 1 | tr -dc '0-9')
    [ -n "$execs" ] && rate=$((execs / SECONDS_EACH))
  fi
  corpus=$(find "$WORK/$t" -type f | wc -l)
  after=$(find "$WORK/artifacts/$t" -type f | wc -l)
  new=$((after - before))
  status=ok
  if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
    status="FINDING (exit $rc; $new new artifact(s) in $WORK/artifacts/$t)"
    found_any=1
    grep -m 3 -E 'ERROR: |FINDING:|runtime error:|SUMMARY:' "$log" >&2 || true
  fi
  summary+=("$(printf '%-18s %6ss  execs %-10s (%s/s)  %-18s  work corpus %-5s  %s' \
    "$t" "$SECONDS_EACH" "${execs:-?}" "${rate:-?}" "${cov:-cov ?}" "$corpus" "$status")")
done
printf '%s\n' "${summary[@]}"
exit "$found_any"
