#!/usr/bin/env bash
# README command 2: set up everything (idempotent) and run the whole test
# suite: GoogleTest suites + Python oracle tests (transformers, safetensors).
# GPU tests skip cleanly on machines without one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$("$ROOT/tools/setup.sh" | tail -n 1)
cd "$BUILD"
JOBS=${MINIPUZZLE_TEST_JOBS:-$(nproc)}
ctest --output-on-failure -j "$JOBS" "$@"
