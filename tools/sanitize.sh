#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer
# (CMakePresets.json: `asan`, or `asan-notorch` for the torch-free part).
#
#   tools/sanitize.sh                 # whole project in ./build-asan, ctest -L cpu
#   tools/sanitize.sh --notorch       # config, safetensors, data, search, fuzz corpus replay
#                                     # in ./build-asan-notorch (minutes, no LibTorch)
#   tools/sanitize.sh --oracle        # also the Python oracle tests (ctest -L 'cpu|oracle')
#   tools/sanitize.sh -- -R safetensors_test   # extra ctest arguments after --
#
# The instrumented code is ours; LibTorch, libstdc++, yaml-cpp, fmt and Python
# are not instrumented (their bugs go unseen, their memory is still tracked).
# Runtime options and suppressions: tools/sanitizers/ (each with its reason).
# Oracle tests run the instrumented CLI from an uninstrumented Python, which
# works because the sanitizer runtime is linked into the binary.
# Knobs: MINIPUZZLE_JOBS (compile jobs, default nproc), MINIPUZZLE_TEST_JOBS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MINIPUZZLE_CACHE:-$HOME/.cache/minipuzzle}
PRESET=asan
LABELS=cpu
CTEST_ARGS=()
while (($#)); do
  case "$1" in
    --notorch) PRESET=asan-notorch ;;
    --oracle) LABELS='cpu|oracle' ;;
    --) shift; CTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument '$1' (tools/sanitize.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
BUILD=$ROOT/build-$PRESET
log() { echo "[sanitize] $*" >&2; }

export CCACHE_DIR=$CACHE/ccache
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR=$ROOT
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}

if [ "$PRESET" = asan ]; then
  # The venv (and its LibTorch) of tools/setup.sh.
  PY=${MINIPUZZLE_BASE_PYTHON:-python3}
  PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  VPY=$CACHE/venv-py$PYVER/bin/python
  if [ ! -x "$VPY" ]; then
    log "no venv at $VPY: running tools/setup.sh first"
    "$ROOT/tools/setup.sh" >/dev/null
  fi
  MINIPUZZLE_TORCH_PREFIX=$("$VPY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  export MINIPUZZLE_TORCH_PREFIX
  export MINIPUZZLE_PYTHON=$VPY
fi

# Test discovery runs the instrumented binaries while building, so the
# runtime options must be set before the build.
SUPP=$ROOT/tools/sanitizers
export ASAN_OPTIONS=${ASAN_OPTIONS:-$(grep -v '^#' "$SUPP/asan.options" | tr '\n' ':' | sed 's/:*$//')}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$SUPP/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-suppressions=$SUPP/ubsan.supp:print_stacktrace=1:halt_on_error=1}

cd "$ROOT"
start=$(date +%s)
if [ ! -f "$BUILD/build.ninja" ]; then
  log "configuring $BUILD (preset $PRESET)"
  cmake --preset "$PRESET" >&2
fi
log "building ($PRESET, ${MINIPUZZLE_JOBS:-$(nproc)} jobs)"
cmake --build "$BUILD" -j "${MINIPUZZLE_JOBS:-$(nproc)}" >&2
built=$(date +%s)
log "build: $((built - start)) s"

cd "$BUILD"
set +e
ctest --output-on-failure -L "$LABELS" -j "${MINIPUZZLE_TEST_JOBS:-$(nproc)}" ${CTEST_ARGS[@]+"${CTEST_ARGS[@]}"}
rc=$?
set -e
log "tests: $(($(date +%s) - built)) s (exit $rc)"
exit $rc
