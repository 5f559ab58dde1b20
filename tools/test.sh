#!/usr/bin/env bash
# README command 2: set up everything (idempotent) and run the whole test
# suite: GoogleTest suites + Python oracle tests (transformers, safetensors),
# then the torch-free part (config, safetensors, data, search, the fuzz seed
# corpus) again under ASan + UBSan (tools/sanitize.sh --notorch: ~3 min cold
# on 2 cores, seconds when built; MINIPUZZLE_SANITIZE=0 skips it).
# GPU tests skip cleanly on machines without one. Extra arguments go to the
# main ctest run (e.g. -R distill).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$("$ROOT/tools/setup.sh" | tail -n 1)
JOBS=${MINIPUZZLE_TEST_JOBS:-$(nproc)}
rc=0
# Each Python file is one ctest test: its skipped cases (only needs_gpu tests
# without a GPU may skip; tests/conftest.py) are listed here by name.
rm -rf "$BUILD/pytest-skips"
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS" "$@") || rc=$?
if compgen -G "$BUILD/pytest-skips/*.txt" > /dev/null; then
  echo "[test] skipped Python cases (declared GPU skips):"
  for f in "$BUILD"/pytest-skips/*.txt; do sed "s|^|  $(basename "$f" .txt): |" "$f"; done
fi
if [ "${MINIPUZZLE_SANITIZE:-1}" != 0 ]; then
  echo "[test] the torch-free suite under ASan + UBSan (tools/sanitize.sh --notorch)" >&2
  "$ROOT/tools/sanitize.sh" --notorch || rc=$((rc ? rc : 1))
fi
exit "$rc"
