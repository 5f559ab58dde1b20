"""bench/distill/bench_distill_job.py (the TARGETS.md whole-job rows, run on a
GPU) at its tiny CPU scale: it runs end to end and reports on the CPU only
what it measures, its MFU peak follows the GPU, its baseline's optimizer is
ours, its parameter counts match transformers' model, and bad arguments
exit 2 with one line."""

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


def test_tiny_scale_reports_on_the_cpu_only_what_it_measures():
    r = run("--scale", "tiny", "--steps", "3", "--meta", "note=test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["benchmark"] == "distill_job" and out["note"] == "test" and out["run"]["steps_timed"] == 2
    # The bench records its own run: no hand-typed date, commit or machine.
    assert out["date"] and out["commit"] and out["machine"]["cpus"] >= 1 and out["machine"]["cpu"]
    step = out["distill_step"]
    # The SSD kernel switch acts on CUDA only: one row. No accelerator, so
    # no peak memory and no MFU against a GPU's peak.
    assert len(step["ours"]) == 1
    for r in step["ours"] + [step["hf_pytorch"]]:
        assert set(r) == {"tokens_per_second"}, r
        assert r["tokens_per_second"] > 0
    assert "mfu_peak_flops" not in out
    best = max(o["tokens_per_second"] for o in step["ours"])
    assert step["speedup"] == pytest.approx(best / step["hf_pytorch"]["tokens_per_second"])
    fwd = out["teacher_forward"]
    assert fwd["ours"]["tokens_per_second"] > 0 and fwd["hf_pytorch"]["tokens_per_second"] > 0


def test_mfu_peak_follows_the_gpu():
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_distill_job as bench

    assert bench.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_bf16("NVIDIA H200") == 989e12
    assert bench.peak_bf16("NVIDIA GeForce RTX 4090") is None
    assert bench.peak_bf16(None) is None


def test_baseline_optimizer_is_ours(tmp_path):
    """The baseline's AdamW takes ours' run.json settings and decays what
    ours decays: matrices, not conv1d, norms, biases, A_log, D, dt_bias."""
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_distill_job as bench
    from bench_common import adamw_like_ours
    from transformers import NemotronHForCausalLM

    bench.make_model(tmp_path / "m", bench.SCALES["tiny"]["student"], 3)
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "m")
    run = {"lr": 3e-4, "schedule": "constant", "warmup": 0, "weight_decay": 0.05, "beta1": 0.8, "beta2": 0.9,
           "eps": 1e-7}
    opt = adamw_like_ours(model, run)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and all(p.dim() == 2 for n, p in model.named_parameters() if n in decayed)
    assert not any("conv1d" in n or "norm" in n or n.endswith(("A_log", ".D", "dt_bias")) for n in decayed)
    assert {n for n, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in n} == decayed
    for g in opt.param_groups:
        assert (g["lr"], g["betas"], g["eps"]) == (3e-4, (0.8, 0.9), 1e-7)
        assert g["weight_decay"] in (0.0, 0.05)
    with pytest.raises(ValueError, match="--schedule constant"):
        adamw_like_ours(model, {**run, "schedule": "cosine"})


def test_parameter_counts_match_transformers(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_distill_job as bench
    from transformers import NemotronHForCausalLM

    cfg = bench.SCALES["tiny"]["student"]
    bench.make_model(tmp_path / "m", cfg, 3)
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "m")
    want = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    assert bench.non_embedding_parameters(tmp_path / "m") == want


@pytest.mark.parametrize("args,needle", [(["--steps", "1"], "--steps"),
                                        (["--ssd-kernel", "on"], "CUDA only"),
                                        (["--meta", "date=2026-01-01"], "records date itself"),
                                        (["--meta", "nokey"], "KEY=VALUE")])
def test_user_errors(args, needle):
    r = run("--scale", "tiny", *args)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


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
