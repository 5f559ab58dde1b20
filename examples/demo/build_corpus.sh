#!/usr/bin/env bash
# Build the demo corpus: byte-level Megatron datasets (vocab 259) from the
# Python sources of the pinned transformers 5.17.0 package in our venv, which
# exists on every machine that ran tools/setup.sh.
#   OUT_DIR/train.{bin,idx}  every .py under transformers/models/[a-e]*/  (~10 MB)
#   OUT_DIR/val.{bin,idx}    every .py under transformers/models/[x-z]*/  (~1.3 MB, held out:
#                            other model folders, no file in common with train)
# usage: build_corpus.sh OUT_DIR [MINIPUZZLE_BINARY] [PYTHON]
#   defaults: $MINIPUZZLE (else build/bin/minipuzzle) and $MINIPUZZLE_PYTHON (else the
#   venv python recorded in build/CMakeCache.txt)
set -euo pipefail
export LC_ALL=C   # glob order = byte order, the same on every machine
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:?usage: build_corpus.sh OUT_DIR [MINIPUZZLE_BINARY] [PYTHON]}
BUILD=${MINIPUZZLE_BUILD_DIR:-$ROOT/build}
MP=${2:-${MINIPUZZLE:-$BUILD/bin/minipuzzle}}
PY=${3:-${MINIPUZZLE_PYTHON:-$(grep '^MINIPUZZLE_PYTHON:' "$BUILD/CMakeCache.txt" 2>/dev/null | cut -d= -f2)}}
[ -n "$PY" ] || { echo "build_corpus.sh: no python (run tools/setup.sh or pass PYTHON)" >&2; exit 2; }
SITE=$("$PY" -c 'import transformers, os; print(os.path.dirname(transformers.__file__))')
VER=$("$PY" -c 'import transformers; print(transformers.__version__)')
[ "$VER" = 5.17.0 ] || echo "build_corpus.sh: warning: transformers $VER, not the pinned 5.17.0 (the corpus differs)" >&2
mkdir -p "$OUT"
"$MP" data build --input "$SITE"/models/[a-e]*/ --extensions .py --out "$OUT/train"
"$MP" data build --input "$SITE"/models/[x-z]*/ --extensions .py --out "$OUT/val"
