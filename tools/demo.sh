#!/usr/bin/env bash
# README command 1: set up everything (idempotent) and run the demo end to end:
#   1. build a Megatron dataset from real text on this machine (the Python
#      sources of the transformers package in our venv, byte-level tokens),
#   2. make a small Nemotron-H checkpoint with transformers itself (random
#      weights, transformers-5 layout) — the kind of directory users bring,
#   3. inspect it, evaluate it on the dataset (fp32 and bf16),
#   4. export it in Hub layout (bf16) and check that transformers loads the
#      export and gives the same logits as our model.
# Outputs land in ${MINIPUZZLE_DEMO_DIR:-./demo-out}.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$("$ROOT/tools/setup.sh" | tail -n 1)
MP=$BUILD/bin/minipuzzle
PY=$(grep '^MINIPUZZLE_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)
OUT=${MINIPUZZLE_DEMO_DIR:-$ROOT/demo-out}
rm -rf "$OUT"; mkdir -p "$OUT"
SITE=$("$PY" -c 'import transformers, os; print(os.path.dirname(transformers.__file__))')

step() { printf '\n== %s\n' "$*"; }

step "1. dataset: transformers' model sources, byte tokens"
"$MP" data build --input "$SITE/models/llama" "$SITE/models/mamba2" "$SITE/models/nemotron_h" \
  --extensions .py --out "$OUT/corpus"

step "2. a small Nemotron-H checkpoint made by transformers (transformers-5 layout)"
"$PY" "$ROOT/tools/make_tiny_model.py" --out "$OUT/teacher" --vocab 259 --hidden 128 \
  --pattern 'M-M*-M-' --seed 0

step "3. inspect and evaluate"
"$MP" inspect "$OUT/teacher" --precision bf16 --context 4096
"$MP" eval "$OUT/teacher" --data "$OUT/corpus" --seq-len 256 --batch 4 --max-tokens 16384
"$MP" eval "$OUT/teacher" --data "$OUT/corpus" --seq-len 256 --batch 4 --max-tokens 16384 --dtype bf16

step "4. export (Hub layout, bf16) and load the export in transformers"
"$MP" export "$OUT/teacher" --out "$OUT/export-bf16" --dtype bf16
"$PY" "$ROOT/tools/check_export.py" --ours "$MP" --original "$OUT/teacher" --export "$OUT/export-bf16"
step "done: outputs in $OUT"
