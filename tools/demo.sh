#!/usr/bin/env bash
# README command 1: set up everything (idempotent) and run the demo end to end:
#   1. build a Megatron dataset from real text on this machine (the Python
#      sources of the pinned transformers package in our venv, byte tokens),
#      with a held-out split of other files;
#   2. take the small hybrid teacher in examples/demo/teacher (trained by our
#      own `minipuzzle train`, examples/demo/make_teacher.sh);
#   3. `minipuzzle compress examples/demo/job.yaml`: score importance, search
#      the architectures under a 1.4 MiB budget (ranked on held-out tokens),
#      prune and short-distill the top 3, long-distill the best, export bf16,
#      and print the before/after table;
#   4. load the export in transformers and compare its logits with ours.
# Outputs land in ${MINIPUZZLE_DEMO_DIR:-./demo-out}.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$("$ROOT/tools/setup.sh" minipuzzle | tail -n 1)
MP=$BUILD/bin/minipuzzle
PY=$(grep '^MINIPUZZLE_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)
OUT=${MINIPUZZLE_DEMO_DIR:-$ROOT/demo-out}
rm -rf "$OUT"; mkdir -p "$OUT"

step() { printf '\n== %s\n' "$*"; }

step "1. dataset: transformers' model sources, byte tokens (train models/[a-e]*, held out models/[x-z]*)"
"$ROOT/examples/demo/build_corpus.sh" "$OUT/corpus" "$MP" "$PY"

step "2. the teacher: trained by minipuzzle train (examples/demo/make_teacher.sh)"
"$MP" inspect "$ROOT/examples/demo/teacher" --precision bf16 --context 1024

step "3. compress it: minipuzzle compress examples/demo/job.yaml"
"$MP" compress "$ROOT/examples/demo/job.yaml" --set out="$OUT/job" \
  --set data.train="$OUT/corpus/train" --set data.validation="$OUT/corpus/val"

step "4. load the export in transformers and compare its logits with ours"
"$PY" "$ROOT/tools/check_export.py" --ours "$MP" --original "$OUT/job/long/final" --export "$OUT/job/export"
step "done in $((SECONDS / 60)) min $((SECONDS % 60)) s: report $OUT/job/report.md, model $OUT/job/export"
