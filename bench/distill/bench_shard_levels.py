#!/usr/bin/env python3
"""Each `--shard` level of `minipuzzle distill` against the memory planner
(`distill --plan --json`), in one run: issue 24's check that the planner's
total is within 10% of what a rank really holds.

  python bench/distill/bench_shard_levels.py [--scale targets|tiny] [--steps N]
      [--levels none,optimizer,gradients,parameters] [--process-group on|off] [--bin build/bin/minipuzzle] [--meta key=value ...]

--scale targets (needs a GPU): the TARGETS.md teacher -> student job (as
bench_distill_job.py), bf16 compute on cuda, one process; measured: the
allocator's peak over the steps (device_peak_bytes in metrics.jsonl) against
the plan's "peak". --scale tiny: a small pair on the CPU in fp32 (what CI
runs); measured: the bytes each kind of state really holds (state_bytes in
metrics.jsonl) against the plan's figure for that kind.

One process is world size 1, where every level keeps the whole state (1/1 of
it): the run shows each level's code path and its memory accounting, not the
saving, which needs several ranks. With --process-group on (the default) the
process still builds its process group (MINIPUZZLE_PROCESS_GROUP=1: NCCL on
CUDA, Gloo on the CPU), so every collective of the level runs, over one rank;
each row names the group it ran on. A level the binary refuses is reported as
refused with its one-line reason. Each row also has tokens/s and its ratio to
`none` from the same run. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import parse_notes, print_result, write_dataset  # noqa: E402
from bench_distill_job import SCALES, make_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ["none", "optimizer", "gradients", "parameters"]
KINDS = ["teacher_weights", "student_weights", "gathered_blocks", "gradients", "master", "moments"]


def shape_args(a, s) -> list[str]:
    return ["--seq-len", str(s["seq_len"]), "--micro-batch", "1", "--dtype", s["dtype"]]


def plan(a, s, tmp: Path, level: str) -> dict:
    p = subprocess.run([a.bin, "distill", "--plan", "--teacher", str(tmp / "teacher"), "--student",
                        str(tmp / "student"), *shape_args(a, s), "--world-size", "1", "--shard", level, "--json"],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def distill(a, s, tmp: Path, level: str) -> dict:
    run = tmp / f"run-{level}"
    env = dict(os.environ, MINIPUZZLE_PROCESS_GROUP="1" if a.process_group == "on" else "0")
    p = subprocess.run([a.bin, "distill", "--teacher", str(tmp / "teacher"), "--student", str(tmp / "student"),
                        "--data", str(tmp / "data"), "--out", str(run), "--steps", str(a.steps),
                        *shape_args(a, s), "--global-batch", "1", "--lr", "1e-4", "--schedule", "constant",
                        "--warmup", "0", "--eval-tokens", str(s["seq_len"]), "--device", s["device"],
                        "--shard", level], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines()
        return {"refused" if p.returncode == 2 else "failed": lines[-1] if lines else f"exit {p.returncode}"}
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "step" in r and not r.get("eval")]
    row = {"tokens_per_second": (steps[-1]["tokens"] - steps[0]["tokens"]) /
                                (steps[-1]["seconds"] - steps[0]["seconds"]),
           "state_bytes": steps[0]["state_bytes"][0], "process_group": steps[0].get("process_group")}
    peaks = [r["device_peak_bytes"] for r in steps if "device_peak_bytes" in r]
    if peaks:
        row["device_peak_bytes"] = max(peaks)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="targets")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--levels", default=",".join(LEVELS))
    ap.add_argument("--process-group", choices=["on", "off"], default="on")
    ap.add_argument("--bin", default=str(ROOT / "build" / "bin" / "minipuzzle"))
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    s = SCALES[a.scale]
    notes = parse_notes(a.meta, "bench_shard_levels")
    levels = a.levels.split(",")
    bad = [l for l in levels if l not in LEVELS]
    if bad or not levels:
        print(f"bench_shard_levels: unknown level {bad[0] if bad else '(none given)'} "
              f"(expected some of {', '.join(LEVELS)})", file=sys.stderr)
        return 2
    if a.steps < 2:
        print("bench_shard_levels: --steps must be at least 2 (the first is not timed)", file=sys.stderr)
        return 2
    if s["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(json.dumps({"benchmark": "shard_levels", "skipped": "no CUDA device"}))
            return 0
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "teacher", s["teacher"], 0)
        make_model(tmp / "student", s["student"], 1)
        vocab = s["teacher"]["vocab"]
        write_dataset(tmp / "data", np.random.default_rng(1).integers(0, vocab, s["seq_len"] * 64 + 1))
        for level in levels:
            row = distill(a, s, tmp, level)
            if "tokens_per_second" in row:
                p = plan(a, s, tmp, level)["bytes"]
                row["planned"] = {k: p[k] for k in KINDS + ["peak"]}
                if "device_peak_bytes" in row:
                    row["peak_planned_over_measured"] = p["peak"] / row["device_peak_bytes"]
                row["kind_planned_over_measured"] = {
                    k: (p[k] / row["state_bytes"][k] if row["state_bytes"].get(k) else None) for k in KINDS}
            rows[level] = row
    base = rows.get("none", {}).get("tokens_per_second")
    for row in rows.values():
        if base and "tokens_per_second" in row:
            row["speed_vs_none"] = row["tokens_per_second"] / base
    out = {"benchmark": "shard_levels", "scale": a.scale, "device": s["device"], "dtype": s["dtype"],
           "world_size": 1, "seq_len": s["seq_len"], "steps": a.steps, "levels": rows,
           "target": "plan peak within 10% of the allocator's peak (GPU); each kind within 10% (CPU)"}
    print_result(out, notes)
    return 1 if any("failed" in r for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
