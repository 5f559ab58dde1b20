#!/usr/bin/env python3
"""`teacher-logits` with the teacher's weights streamed against the same
command with them resident, in one run (issue 23's GPU target: with the cap
at half the weights, at least 0.8x the resident throughput, with layer-major
groups of at least 64K tokens).

  python bench/memory/bench_streamed_teacher.py [--scale targets|tiny] [--windows N]
      [--bin build/bin/minipuzzle] [--meta key=value ...]

--scale targets (needs a GPU): the TARGETS.md teacher (0.93B, vocab 131072),
bf16 on cuda, windows of 2048 tokens. --scale tiny: a small teacher on the
CPU in fp32 (what CI runs, to keep the script working).

Rows, each the whole command's wall time (load included, the same for every
row) over the same windows:
  resident        every weight on the device
  half_weights    --max-device-memory = half the weights' bytes (raised to the
                  smallest cap the planner accepts, and said so, when half is
                  below it); the plan line says how many batches a group holds
  group_64k       (group_big at the tiny scale) the smallest cap (doubling from half the weights, found with
                  --dry-run, config only) whose groups hold at least 64K tokens,
                  while still below the weights (so the weights do stream);
                  no row when half the weights already holds such groups
Each streamed cache must equal the resident one byte for byte (checked here).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "distill"))
from bench_common import parse_notes, print_result, write_dataset  # noqa: E402
from bench_distill_job import TEACHER, make_model  # noqa: E402

SCALES = {
    "targets": {"teacher": TEACHER, "seq_len": 2048, "device": "cuda", "dtype": "bf16", "batch": 4, "windows": 128,
                "group_tokens": 65536},
    "tiny": {"teacher": {"hidden": 256, "pattern": "M-M*-M-M-", "ffn": 512, "mamba-heads": 8, "mamba-head-dim": 32,
                         "state": 16, "groups": 2, "attn-heads": 4, "kv-heads": 2, "head-dim": 64, "vocab": 4096,
                         "chunk": 32},
             "seq_len": 64, "device": "cpu", "dtype": "fp32", "batch": 1, "windows": 24, "group_tokens": 1024},
}
PLAN = re.compile(r"weights (resident|streamed)")
GROUP = re.compile(r"(\d+) batches per layer-major group")
NEED = re.compile(r"need at least ([0-9.]+) (B|KiB|MiB|GiB)")
UNIT = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def weight_bytes(model: Path, dtype: str) -> int:
    """The checkpoint's parameters at the compute dtype's width."""
    from safetensors import safe_open
    n = 0
    for f in sorted(model.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                n += int(np.prod(st.get_slice(name).get_shape()))
    return n * (2 if dtype in ("bf16", "fp16") else 4)


class Bench:
    def __init__(self, a, s, tmp: Path):
        self.a, self.s, self.tmp = a, s, tmp

    def args(self, out: Path, cap: int | None) -> list[str]:
        s = self.s
        cmd = [self.a.bin, "teacher-logits", str(self.tmp / "teacher"), "--data", str(self.tmp / "data"),
               "--top-k", "32", "--out", str(out), "--seq-len", str(s["seq_len"]), "--windows", str(self.a.windows),
               "--batch", str(s["batch"]), "--dtype", s["dtype"], "--device", s["device"]]
        return cmd + (["--max-device-memory", str(cap)] if cap is not None else [])

    def plan(self, cap: int | None) -> tuple[str, int | None, str]:
        """(resident|streamed|refused, batches per group, the line)."""
        p = subprocess.run(self.args(self.tmp / "dry", cap) + ["--dry-run"], capture_output=True, text=True)
        line = (p.stdout.strip() or p.stderr.strip()).splitlines()[0]
        if p.returncode != 0:
            return "refused", None, line
        kind = PLAN.search(line).group(1)
        g = GROUP.search(line)
        return kind, int(g.group(1)) if g else None, line

    def run(self, name: str, cap: int | None) -> dict:
        out = self.tmp / name
        t0 = time.perf_counter()
        subprocess.run(self.args(out, cap), check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        tokens = self.a.windows * self.s["seq_len"]
        return {"cap_bytes": cap, "seconds": seconds, "tokens_per_second": tokens / seconds}


def same_cache(a: Path, b: Path) -> bool:
    shards = sorted(p.name for p in a.glob("shard-*.safetensors"))
    return shards == sorted(p.name for p in b.glob("shard-*.safetensors")) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in shards)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="targets")
    ap.add_argument("--windows", type=int, default=None)
    ap.add_argument("--bin", default=str(ROOT / "build" / "bin" / "minipuzzle"))
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    s = SCALES[a.scale]
    a.windows = s["windows"] if a.windows is None else a.windows
    if a.windows < 1:
        print(f"bench_streamed_teacher: --windows {a.windows} must be at least 1", file=sys.stderr)
        return 2
    notes = parse_notes(a.meta, "bench_streamed_teacher")
    if s["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(json.dumps({"benchmark": "streamed_teacher", "skipped": "no CUDA device"}))
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "teacher", s["teacher"], 0)
        vocab = s["teacher"]["vocab"]
        write_dataset(tmp / "data", np.random.default_rng(1).integers(0, vocab, s["seq_len"] * (a.windows + 8) + 1))
        b = Bench(a, s, tmp)
        weights = weight_bytes(tmp / "teacher", s["dtype"])
        rows = {"resident": b.run("resident", None)}
        half = weights // 2
        kind, groups, line = b.plan(half)
        raised = None
        if kind == "refused":
            need = NEED.search(line)
            if not need:
                raise SystemExit(f"bench_streamed_teacher: the planner refused half the weights: {line}")
            raised = int(float(need.group(1)) * UNIT[need.group(2)]) + 1
            kind, groups, line = b.plan(raised)
        cap = raised or half
        rows["half_weights"] = {**b.run("half_weights", cap), "plan": line, "raised_to_minimum": raised is not None}
        want = s["group_tokens"] // (s["seq_len"] * s["batch"])
        big = cap
        while big < weights:
            kind, groups, line = b.plan(big)
            if kind == "streamed" and groups is not None and groups >= want:
                name = "group_64k" if a.scale == "targets" else "group_big"
                if big == cap:  # half the weights already holds such groups: that row is this row
                    rows["half_weights"]["groups_hold_wanted_tokens"] = True
                else:
                    rows[name] = {**b.run(name, big), "plan": line}
                break
            big *= 2
        for name, row in rows.items():
            row["ratio_to_resident"] = rows["resident"]["seconds"] / row["seconds"]
            if name != "resident":
                row["cache_identical_to_resident"] = same_cache(tmp / "resident", tmp / name)
        out = {"benchmark": "streamed_teacher", "scale": a.scale, "device": s["device"], "dtype": s["dtype"],
               "teacher": s["teacher"], "weight_bytes": weights, "windows": a.windows, "seq_len": s["seq_len"],
               "batch": s["batch"], "group_tokens_wanted": s["group_tokens"], "rows": rows,
               "target": "half_weights/group_64k at least 0.8x resident (issue 23, GPU)"}
        if not any(n.startswith("group") for n in rows) and "groups_hold_wanted_tokens" not in rows["half_weights"]:
            out["group_note"] = f"no cap below the weights gives groups of {s['group_tokens']} tokens"
    print_result(out, notes)
    bad = [n for n, r in rows.items() if r.get("cache_identical_to_resident") is False]
    if bad:
        print(f"bench_streamed_teacher: streamed cache differs from resident: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
