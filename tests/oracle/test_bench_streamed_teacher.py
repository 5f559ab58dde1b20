"""bench/memory/bench_streamed_teacher.py (issue 23's streamed-teacher rows,
run on a GPU by tools/gpu_check.sh) at its tiny CPU scale: it runs end to
end, the streamed rows really stream, their caches equal the resident one,
and a bad argument exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ.get("MINIPUZZLE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
SCRIPT = ROOT / "bench" / "memory" / "bench_streamed_teacher.py"
BIN = os.environ.get("MINIPUZZLE_BIN", str(ROOT / "build" / "bin" / "minipuzzle"))


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--bin", BIN, *args], capture_output=True, text=True,
                          timeout=600)


def test_tiny_scale_streams_and_keeps_the_cache():
    r = run("--scale", "tiny", "--windows", "16", "--meta", "note=test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["benchmark"] == "streamed_teacher" and out["note"] == "test" and out["date"] and out["commit"]
    rows = out["rows"]
    assert rows["resident"]["cap_bytes"] is None and rows["resident"]["ratio_to_resident"] == 1.0
    half = rows["half_weights"]
    # Half the weights is what was asked, unless the planner needed more; either way below the weights.
    assert half["cap_bytes"] < out["weight_bytes"]
    assert half["raised_to_minimum"] or half["cap_bytes"] == out["weight_bytes"] // 2
    for name, row in rows.items():
        assert row["tokens_per_second"] > 0
        if name != "resident":
            assert row["plan"].startswith("weights streamed"), row["plan"]
            assert row["cache_identical_to_resident"] is True


def test_bad_windows_is_one_line_exit_2():
    r = run("--scale", "tiny", "--windows", "0")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--windows" in r.stderr
