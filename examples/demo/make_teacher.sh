#!/usr/bin/env bash
# The exact commands that made examples/demo/teacher/ (the demo's trained
# Nemotron-H teacher). Re-running them gives the same initial weights and the
# same data order; the trained weights match up to CPU floating-point
# summation order (thread count, CPU type).
# usage: make_teacher.sh [WORK_DIR] [--install]
#   WORK_DIR (default ./teacher-work): corpus/, init/, train/ (metrics.jsonl, report.md, final/)
#   --install: copy train/final/{config.json,model.safetensors} to examples/demo/teacher/
# Time: 38 min wall (2,112 s of training at 310 tokens/s) on a 2-core AMD EPYC VM shared
# with other jobs' compiles (nice 10); an idle machine of that size is several times faster.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-./teacher-work}
BUILD=${MINIPUZZLE_BUILD_DIR:-$ROOT/build}
MP=${MINIPUZZLE:-$BUILD/bin/minipuzzle}
PY=${MINIPUZZLE_PYTHON:-$(grep '^MINIPUZZLE_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"

# 1. corpus: transformers' model sources, byte tokens (train: models/[a-e]*, val: models/[x-z]*)
MINIPUZZLE=$MP MINIPUZZLE_PYTHON=$PY "$ROOT/examples/demo/build_corpus.sh" "$WORK/corpus"

# 2. random init with transformers: hybrid M/*/- pattern, hidden 128, 1.08M parameters
rm -rf "$WORK/init"
"$PY" "$ROOT/tools/make_tiny_model.py" --out "$WORK/init" --vocab 259 --hidden 128 \
  --pattern 'M-M*-M-M-' --ffn 512 --mamba-heads 8 --mamba-head-dim 32 --state 16 --groups 2 \
  --attn-heads 4 --kv-heads 2 --head-dim 32 --chunk 32 --seed 0

# 3. train with our own trainer: next-token cross-entropy, AdamW, warmup + cosine
rm -rf "$WORK/train"
"$MP" train --student "$WORK/init" --data "$WORK/corpus/train" --eval-data "$WORK/corpus/val" \
  --out "$WORK/train" --steps 160 --seq-len 256 --micro-batch 16 --global-batch 16 \
  --lr 3e-3 --min-lr 3e-4 --warmup 16 --schedule cosine --weight-decay 0.1 --clip-grad 1 \
  --eval-every 32 --eval-tokens 16384 --save-every 32 --seed 1234 --dtype fp32

# 4. held-out evaluation (the numbers in examples/demo/README.md)
"$MP" eval "$WORK/train/final" --data "$WORK/corpus/val" --seq-len 256 --batch 16 --max-tokens 131072

if [ "${2:-}" = --install ]; then
  mkdir -p "$ROOT/examples/demo/teacher"
  cp "$WORK/train/final/config.json" "$WORK/train/final/model.safetensors" "$ROOT/examples/demo/teacher/"
  # the byte-level tokenizer as Hub files (AutoTokenizer reads the teacher and everything made from it)
  "$PY" "$ROOT/tools/make_tiny_model.py" --tokenizer-only "$ROOT/examples/demo/teacher"
fi
