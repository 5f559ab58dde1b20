#!/usr/bin/env bash
# One idempotent set-up step, used by both README commands:
#   1. Debian packages (C++ libraries, ninja, ccache),
#   2. a Python venv with the pinned packages of tools/requirements.txt,
#      kept outside the clone ($MINIPUZZLE_CACHE, default ~/.cache/minipuzzle)
#      and reused by every clone while the pins are unchanged,
#   3. CMake configure against that venv's LibTorch, and the build
#      (ccache, also under $MINIPUZZLE_CACHE, makes a fresh clone's build quick).
# Prints the build directory on its last line.
# usage: tools/setup.sh [TARGET...]   (default: every target; the demo builds
#        only `minipuzzle`, which saves the tests' compile time)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MINIPUZZLE_CACHE:-$HOME/.cache/minipuzzle}
BUILD=${MINIPUZZLE_BUILD_DIR:-$ROOT/build}
BUILD_TYPE=${MINIPUZZLE_BUILD_TYPE:-RelWithDebInfo}
mkdir -p "$CACHE"
log() { echo "[setup] $*" >&2; }

# --- 1. Debian packages ------------------------------------------------------
APT_PACKAGES=(build-essential cmake ninja-build ccache python3-venv
  libeigen3-dev libboost-program-options-dev libfmt-dev nlohmann-json3-dev
  libyaml-cpp-dev libgtest-dev libgmock-dev libcairo2-dev fonts-dejavu-core pkg-config)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi

# --- 2. Python venv (pinned) --------------------------------------------------
PY=${MINIPUZZLE_BASE_PYTHON:-python3}
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
VENV=$CACHE/venv-py$PYVER
REQ=$ROOT/tools/requirements.txt
CONSTRAINTS=$ROOT/tools/constraints.txt  # every transitive package, pinned
want=$(cat "$REQ" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)
have=$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  log "creating/updating venv $VENV (torch, transformers: a few GB the first time)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" -c "$CONSTRAINTS" >&2
  echo "$want" > "$VENV/.requirements.sha256"
fi
VPY=$VENV/bin/python
TORCH_PREFIX=$("$VPY" -c 'import torch; print(torch.utils.cmake_prefix_path)')

# --- 3. configure + build ----------------------------------------------------
export CCACHE_DIR=$CACHE/ccache
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR=$ROOT
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
JOBS=${MINIPUZZLE_JOBS:-$(nproc)}
if [ ! -f "$BUILD/build.ninja" ] || [ "$BUILD/CMakeCache.txt" -ot "$REQ" ] || [ "$BUILD/CMakeCache.txt" -ot "$CONSTRAINTS" ]; then
  log "configuring $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache \
    -DMINIPUZZLE_PYTHON="$VPY" \
    ${MINIPUZZLE_CMAKE_ARGS:-} >&2
fi
TARGET_ARGS=()
if (($#)); then TARGET_ARGS=(--target "$@"); fi
log "building ($JOBS jobs${1:+: $*})"
cmake --build "$BUILD" -j "$JOBS" ${TARGET_ARGS[@]+"${TARGET_ARGS[@]}"} >&2
echo "$BUILD"
