#!/usr/bin/env bash
# Issue 25: the experiment's MoE arm, one seed. A small MoE teacher (moe_arm.py init: 3 MoE
# layers of 8 routed experts, 2 per token) trained by `minipuzzle train` on the demo corpus ->
# score -> students with 4 of the 8 experts of every MoE layer: the experts `prune` keeps under
# each --expert-ranking (output_norm, frequency, contribution), and random experts (prune
# --expert-ranking output_norm on scores whose per-expert entries are uniform noise, seeded) ->
# all distilled on the same tokens -> held-out loss and KL.
# usage: examples/experiment/run.sh --arm moe [WORK_DIR]   (or this script directly; default
#        ./experiment-work-moe; results go to examples/results/moe-seed-N/ unless RESULTS_DIR is set)
# Knobs: MINIPUZZLE, MINIPUZZLE_PYTHON, SEED (data order of every run, default 1234),
# RANDOM_ARM_SEED (the random experts' draw, default SEED), TEACHER_STEPS, KD_STEPS, KD_LR,
# EVAL_TOKENS, RANKINGS (the --expert-ranking arms, default "output_norm frequency contribution"),
# REUSE_TEACHER=1 (keep WORK_DIR's corpus, trained teacher and scores from an earlier run).
# Time: about 12 min on a 2-core VM (examples/results/moe-seed-*/timings.txt).
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mkdir -p "${1:-./experiment-work-moe}" && cd "${1:-./experiment-work-moe}" && pwd)
SEED=${SEED:-1234}
RES=${RESULTS_DIR:-$ROOT/examples/results/moe-seed-$SEED}
BUILD=${MINIPUZZLE_BUILD_DIR:-$ROOT/build}
MP=${MINIPUZZLE:-$BUILD/bin/minipuzzle}
PY=${MINIPUZZLE_PYTHON:-$(grep '^MINIPUZZLE_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)}
EXP="$PY $ROOT/examples/experiment/exp.py"
MOE="$PY $ROOT/examples/experiment/moe_arm.py"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

SEQ=256
TEACHER_GB=16                          # teacher: TEACHER_STEPS x 16 windows x 256 tokens
TEACHER_STEPS=${TEACHER_STEPS:-48}
GB=8                                   # students: KD_STEPS x 8 windows x 256 tokens
KD_STEPS=${KD_STEPS:-16}
KD_LR=${KD_LR:-5e-4}
KD_MIN_LR=$("$PY" -c "import sys; print(f'{float(sys.argv[1]) / 10:g}')" "$KD_LR")
RANDOM_ARM_SEED=${RANDOM_ARM_SEED:-$SEED}
EVAL_TOKENS=${EVAL_TOKENS:-32768}
KEEP_EXPERTS=4
RANKINGS=${RANKINGS:-output_norm frequency contribution}
ARMS="$RANKINGS random"
export REUSE_TEACHER=${REUSE_TEACHER:-0}
TIMES=$WORK/timings.txt
[ "$REUSE_TEACHER" = 1 ] && [ -f "$WORK/scores/importance.json" ] || REUSE_TEACHER=0
[ "$REUSE_TEACHER" = 1 ] && grep -v -e '^distill_' -e '^total ' "$TIMES" > "$TIMES.keep" && mv "$TIMES.keep" "$TIMES" || : > "$TIMES"
T0=$(date +%s)
step() { printf '\n== %s\n' "$*"; }
timed() { local name=$1; shift; local s; s=$(date +%s); "$@"; echo "$name $(( $(date +%s) - s ))" >> "$TIMES"; }

TRAIN=$WORK/corpus/train
VAL=$WORK/corpus/valsample
TEACHER=$WORK/teacher-train/final
if [ "$REUSE_TEACHER" = 1 ]; then
step "1-3. reusing the corpus, teacher and scores in $WORK"
else
step "1. corpus (the dense arms' train split and held-out evaluation sample)"
SITE=$("$PY" -c 'import transformers, os; print(os.path.dirname(transformers.__file__))')
rm -rf "$WORK/corpus"
MINIPUZZLE=$MP MINIPUZZLE_PYTHON=$PY "$ROOT/examples/demo/build_corpus.sh" "$WORK/corpus"
$EXP valsample "$SITE" "$WORK/corpus/valsample-src"
"$MP" data build --input "$WORK/corpus/valsample-src" --out "$WORK/corpus/valsample"
TRAIN=$WORK/corpus/train
VAL=$WORK/corpus/valsample

step "2. MoE teacher: random init (transformers), trained by minipuzzle train"
rm -rf "$WORK/init" "$WORK/teacher-train"
$MOE init "$WORK/init" 0
timed train_teacher "$MP" train --student "$WORK/init" --data "$TRAIN" --eval-data "$VAL" --out "$WORK/teacher-train" \
  --steps "$TEACHER_STEPS" --seq-len $SEQ --micro-batch $TEACHER_GB --global-batch $TEACHER_GB --lr 3e-3 --min-lr 3e-4 \
  --warmup $(( TEACHER_STEPS < 8 ? TEACHER_STEPS : 8 )) --schedule cosine --weight-decay 0.1 --clip-grad 1 --eval-every 24 --eval-tokens 16384 --save-every 0 \
  --seed 1234 --dtype fp32 2>&1 | tail -n 2
TEACHER=$WORK/teacher-train/final
timed eval_teacher "$MP" eval "$TEACHER" --data "$VAL" --seq-len $SEQ --batch 16 --max-tokens "$EVAL_TOKENS" --json > "$WORK/teacher.eval.json"
cat "$WORK/teacher.eval.json"

step "3. importance scores (64 windows of the training split)"
rm -rf "$WORK/scores" "$WORK/scores-random"
timed score "$MP" score "$TEACHER" --data "$TRAIN" --samples 64 --seq-len $SEQ --batch 16 --out "$WORK/scores"
fi

step "4. prune to $KEEP_EXPERTS experts per MoE layer: by each ranking ($RANKINGS), and at random"
rm -rf "$WORK/students" "$WORK/scores-random"; mkdir -p "$WORK/students"
for r in $RANKINGS; do
  "$MP" prune "$TEACHER" --scores "$WORK/scores" --set n_routed_experts=$KEEP_EXPERTS --expert-ranking "$r" \
    --out "$WORK/students/$r"
done
$MOE random-experts "$WORK/scores" "$WORK/scores-random" "$RANDOM_ARM_SEED"
"$MP" prune "$TEACHER" --scores "$WORK/scores-random" --set n_routed_experts=$KEEP_EXPERTS --expert-ranking output_norm \
  --out "$WORK/students/random"

step "5. distill every student on the same ${KD_STEPS} x ${GB} x ${SEQ} tokens"
rm -rf "$WORK/runs"; mkdir -p "$WORK/runs"
for name in $ARMS; do
  timed "distill_$name" "$MP" distill --teacher "$TEACHER" --student "$WORK/students/$name" --out "$WORK/runs/$name" \
    --data "$TRAIN" --eval-data "$VAL" --steps "$KD_STEPS" --seq-len $SEQ --micro-batch $GB --global-batch $GB \
    --warmup 2 --schedule cosine --lr "$KD_LR" --min-lr "$KD_MIN_LR" --eval-tokens "$EVAL_TOKENS" --seed "$SEED" \
    --save-every 0 --dtype fp32 2>&1 | tail -n 2
done

step "6. summary"
for name in $ARMS; do "$MP" inspect "$WORK/students/$name" --json > "$WORK/$name.inspect.json"; done
"$MP" inspect "$TEACHER" --json > "$WORK/teacher.inspect.json"
echo "total $(( $(date +%s) - T0 ))" >> "$TIMES"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" - "$WORK" "$COMMIT" "$MP" "$TIMES" "$KD_STEPS" "$GB" "$SEQ" "$(( TEACHER_STEPS * TEACHER_GB * SEQ ))" \
  "$EVAL_TOKENS" "$KD_LR" "$KD_MIN_LR" "$SEED" "$RANDOM_ARM_SEED" "$TEACHER" "$RANKINGS" <<'EOF'
import datetime, json, sys, os, platform
work, commit, mp, times, steps, gb, seq, T, ev, kd_lr, kd_min_lr, seed, rseed, teacher, rankings = sys.argv[1:]
steps, gb, seq, T, ev = map(int, (steps, gb, seq, T, ev))
tim = {l.split()[0]: int(l.split()[1]) for l in open(times) if l.strip()}
meta = {"date": os.environ.get("EXPERIMENT_DATE") or datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "machine": os.environ.get("EXPERIMENT_MACHINE", f"{os.cpu_count()}-core CPU ({platform.machine()}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"),
        "commit": commit, "minipuzzle": mp, "teacher_dir": teacher, "teacher_tokens": T, "kd_tokens": steps * gb * seq,
        "kd_lr": float(kd_lr), "kd_min_lr": float(kd_min_lr), "seed": int(seed), "random_seed": int(rseed),
        "steps": steps, "tokens_per_step": gb * seq,
        "eval": {"tokens": ev, "seq_len": seq, "description":
                 f"distill's evaluation on the first {ev:,} tokens of the held-out sample (a 512-byte slice from "
                 f"the middle of each of the 69 files under transformers/models/[x-z]*, windows of {seq}); loss in "
                 f"nats per byte, KL and agreement against the teacher"},
        "arm_notes": ["Ranked arms: `prune --set n_routed_experts=4 --expert-ranking R` on the same scores "
                      "(output_norm: mean weighted-output L2 per routed token, ModelOpt's; frequency: routing "
                      "frequency; contribution: frequency x output_norm).",
                      f"Random arm: `prune --set n_routed_experts=4 --expert-ranking output_norm` with the scores' "
                      f"per-expert entries replaced by uniform noise (seed {rseed}); everything else as the ranked arms."]
                     + ([f"Corpus, teacher and scores reused (REUSE_TEACHER=1) from an earlier run in {work}: their "
                         f"timings are that run's; `total` counts this run's prune, distillation and summary only."]
                        if os.environ.get("REUSE_TEACHER") == "1" else []),
        "arms": [{"name": r, "label": f"4 experts by {r}"} for r in rankings.split()]
                + [{"name": "random", "label": "4 random experts"}],
        "timings": tim}
json.dump(meta, open(os.path.join(work, "meta.json"), "w"), indent=1)
EOF
$MOE summarize "$WORK" "$RES"
cp "$TIMES" "$RES/timings.txt"
cp "$WORK/meta.json" "$RES/meta.json"
cp "$WORK/scores/importance.json" "$RES/importance.json"
cp "$TEACHER/config.json" "$RES/teacher-config.json"
cat "$RES/results.md"
