"""bench/distill/bench_distill_job.py (the TARGETS.md whole-job rows, run on a
GPU) at its tiny CPU scale: it runs end to end, its MFU follows its own
formula, its parameter counts match transformers' model, and a bad
--steps exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("MINIPUZZLE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
SCRIPT = ROOT / "bench" / "distill" / "bench_distill_job.py"
BIN = os.environ.get("MINIPUZZLE_BIN", str(ROOT / "build" / "bin" / "minipuzzle"))


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--bin", BIN, *args], capture_output=True, text=True,
                          timeout=600)


def test_tiny_scale_runs_end_to_end():
    r = run("--scale", "tiny", "--steps", "3", "--meta", "commit=test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["benchmark"] == "distill_job" and out["commit"] == "test" and out["run"]["steps_timed"] == 2
    step = out["distill_step"]
    assert [o["ssd_kernel"] for o in step["ours"]] == [False, True]
    flops = 6 * out["models"]["student_non_embedding"] + 2 * out["models"]["teacher_non_embedding"]
    for r in step["ours"] + [step["hf_pytorch"]]:
        assert r["tokens_per_second"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * flops / 989e12, rel=1e-12)
        assert r["peak_gib"] is None  # CPU: no accelerator memory
    best = max(o["tokens_per_second"] for o in step["ours"])
    assert step["speedup"] == pytest.approx(best / step["hf_pytorch"]["tokens_per_second"])
    fwd = out["teacher_forward"]
    assert fwd["ours"]["tokens_per_second"] > 0 and fwd["hf_pytorch"]["tokens_per_second"] > 0


def test_parameter_counts_match_transformers(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_distill_job as bench
    from transformers import NemotronHForCausalLM

    cfg = bench.SCALES["tiny"]["student"]
    bench.make_model(tmp_path / "m", cfg, 3)
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "m")
    want = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    assert bench.non_embedding_parameters(tmp_path / "m") == want


def test_too_few_steps_is_a_user_error():
    r = run("--scale", "tiny", "--steps", "1")
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "--steps" in r.stderr


def test_sigterm_still_prints_what_was_measured():
    # tools/gpu_check.sh runs the benchmark under `timeout`: a cut run must
    # still print its JSON, naming what it did not measure, and exit 124.
    import signal
    import time
    p = subprocess.Popen([sys.executable, str(SCRIPT), "--bin", BIN, "--scale", "tiny", "--steps", "3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        # Once the script has started its first child (making the models), the handler is installed.
        try:
            children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 124, err
    cut = json.loads(out)
    assert cut["cut"].startswith("stopped by SIGTERM; missing:") and "ours distill" in cut["cut"], cut["cut"]
