#!/usr/bin/env bash
# README command 1: set up everything (idempotent) and run the demo end to end:
#   1. build a Megatron dataset from real text on this machine (the Python
#      sources of the transformers package in our venv, byte-level tokens),
#   2. make a small Nemotron-H checkpoint with transformers itself (random
#      weights, transformers-5 layout) — the kind of directory users bring,
#   3. inspect it, evaluate it on the dataset (fp32 and bf16),
#   4. compress it: score importance on calibration windows, search the
#      architectures that fit a memory budget (ranked on held-out tokens),
#      prune to the best one, distill the teacher's logits into it;
#   5. export the student in Hub layout (bf16) and check that transformers
#      loads the export and gives the same logits as our model.
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

step "4a. importance: drop-one layer metrics and width statistics"
"$MP" score "$OUT/teacher" --data "$OUT/corpus" --samples 64 --seq-len 256 --batch 8 --out "$OUT/scores"
step "4b. search: architectures within 0.8 MiB (bf16 weights, 1024-token context), ranked on data"
"$MP" search "$OUT/teacher" --scores "$OUT/scores" --budget 0.8MiB --precision bf16 --context 1024 \
  --space full --axis attention_layers=1 --max-width-reduction 0.5 --max-depth-reduction 0.5 --top-k 5 \
  --rank-data "$OUT/corpus" --rank-tokens 8192 --rank-seq-len 256 --out "$OUT/candidates.json"
step "4c. prune to the best candidate"
"$MP" prune "$OUT/teacher" --scores "$OUT/scores" --candidate "$OUT/candidates.json#1" --out "$OUT/student"
"$MP" inspect "$OUT/student" --precision bf16 --context 1024
step "4d. distill the teacher's logits into the student (forward KL, T = 1)"
"$MP" distill --teacher "$OUT/teacher" --student "$OUT/student" --data "$OUT/corpus" --out "$OUT/distill" \
  --steps 40 --seq-len 256 --micro-batch 4 --global-batch 8 --lr 2e-3 --min-lr 2e-4 --warmup 4 \
  --eval-every 20 --eval-tokens 8192 --save-every 20
"$MP" eval "$OUT/teacher" --data "$OUT/corpus" --seq-len 256 --batch 4 --max-tokens 16384
"$MP" eval "$OUT/distill/final" --data "$OUT/corpus" --seq-len 256 --batch 4 --max-tokens 16384

step "5. export the student (Hub layout, bf16) and load the export in transformers"
"$MP" export "$OUT/distill/final" --out "$OUT/export-bf16" --dtype bf16
"$PY" "$ROOT/tools/check_export.py" --ours "$MP" --original "$OUT/distill/final" --export "$OUT/export-bf16"
step "done: outputs in $OUT"
