#!/usr/bin/env bash
# The experiment over several seeds: run.sh once per seed (results in
# examples/results/seed-N/), then the mean and spread of every arm in
# examples/results/results.md (+ results.json, seeds_loss.png).
# usage: examples/experiment/seeds.sh [SEED...]   (default: 1234 4321 1111 2222 3333)
# Knobs: WORK_ROOT (default ./experiment-work), RESULTS_ROOT (default examples/results),
# EXPERIMENT_NOTES (the commentary appended to results.md; default examples/experiment/NOTES.md),
# and run.sh's.
# Time: about 2.5 min per seed on an idle 2-core VM.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RESULTS_ROOT=${RESULTS_ROOT:-$ROOT/examples/results}
WORK_ROOT=${WORK_ROOT:-./experiment-work}
BUILD=${MINIPUZZLE_BUILD_DIR:-$ROOT/build}
PY=${MINIPUZZLE_PYTHON:-$(grep '^MINIPUZZLE_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)}
SEEDS=("$@")
((${#SEEDS[@]})) || SEEDS=(1234 4321 1111 2222 3333)
mkdir -p "$WORK_ROOT"
dirs=()
for seed in "${SEEDS[@]}"; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "seeds.sh: '$seed' is not a seed (a non-negative integer)" >&2; exit 2; }
  echo "== seed $seed" >&2
  SEED=$seed RESULTS_DIR=$RESULTS_ROOT/seed-$seed EXPERIMENT_NOTES=none \
    "$ROOT/examples/experiment/run.sh" "$WORK_ROOT/seed-$seed" > "$WORK_ROOT/seed-$seed.log" 2>&1 ||
    { echo "seeds.sh: seed $seed failed (log $WORK_ROOT/seed-$seed.log)" >&2; exit 1; }
  dirs+=("$RESULTS_ROOT/seed-$seed")
done
EXPERIMENT_NOTES=${EXPERIMENT_NOTES:-$ROOT/examples/experiment/NOTES.md} \
  "$PY" "$ROOT/examples/experiment/exp.py" aggregate "$RESULTS_ROOT" "${dirs[@]}"
