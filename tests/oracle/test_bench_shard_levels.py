"""bench/distill/bench_shard_levels.py (issue 24's planner-against-allocator
rows, run on a GPU by tools/gpu_check.sh) at its tiny CPU scale: it runs each
level asked for, the planner's figure for each kind of state is within 10% of
what the rank logged, and a bad argument exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ.get("MINIPUZZLE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
SCRIPT = ROOT / "bench" / "distill" / "bench_shard_levels.py"
BIN = os.environ.get("MINIPUZZLE_BIN", str(ROOT / "build" / "bin" / "minipuzzle"))


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--bin", BIN, *args], capture_output=True, text=True,
                          timeout=600)


def test_tiny_scale_plans_what_each_level_holds():
    r = run("--scale", "tiny", "--steps", "2", "--levels", "none,parameters", "--meta", "note=test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["benchmark"] == "shard_levels" and out["note"] == "test" and out["world_size"] == 1
    assert set(out["levels"]) == {"none", "parameters"}
    for level, row in out["levels"].items():
        assert row["tokens_per_second"] > 0, level
        for kind, ratio in row["kind_planned_over_measured"].items():
            measured = row["state_bytes"].get(kind, 0)
            assert (ratio is None and measured == 0 and row["planned"][kind] == 0) or abs(ratio - 1) <= 0.10, \
                (level, kind, ratio)
        assert "device_peak_bytes" not in row  # the CPU has no allocator peak to report
        assert row["process_group"] == "gloo"  # one process, its collectives still run
    assert out["levels"]["none"]["speed_vs_none"] == 1.0


def test_bad_level_is_one_line_exit_2():
    r = run("--scale", "tiny", "--levels", "none,zero4")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "zero4" in r.stderr
