"""`minipuzzle distill` end to end: prune a tiny HF-made teacher, distill the
student, load the result in transformers; SIGINT saves a checkpoint and
--resume finishes the run with the same losses; user errors exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nemotron_tiny as nt
from test_score_search import write_dataset

SPEC = nt.SPECS_BY_NAME["g2_state32"]


def distill_work(root: Path) -> dict:
    """A random teacher, the student made by pruning one layer of it, and a
    training dataset: the setup every distillation test starts from."""
    teacher = nt.save_checkpoint(nt.build_model(SPEC), SPEC, root / "teacher", "hub")
    rng = np.random.default_rng(8)
    data = write_dataset(root / "train", [rng.integers(0, SPEC.vocab, 900) for _ in range(6)])
    student = root / "student"
    nt.run_cli("prune", teacher, "--set", "drop_layers=1", "--out", student)
    return {"root": root, "teacher": teacher, "student": student, "data": data}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return distill_work(tmp_path_factory.mktemp("distill"))


def distill_args(work, out, steps=6, *extra):
    return ["distill", "--teacher", work["teacher"], "--student", work["student"], "--data", work["data"],
            "--out", out, "--steps", steps, "--seq-len", 32, "--micro-batch", 2, "--global-batch", 4,
            "--lr", "3e-3", "--min-lr", "3e-4", "--warmup", 1, "--eval-tokens", 128, "--save-every", 2, *extra]


def step_losses(run: Path):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        j = json.loads(line)
        if not j.get("eval"):
            out.append((j["step"], j["loss"], j["grad_norm"], j["tokens"]))
    return out


def test_distilled_student_loads_in_transformers(work, tmp_path):
    run = tmp_path / "run"
    nt.run_cli(*distill_args(work, run))
    assert [s for s, *_ in step_losses(run)] == list(range(1, 7))
    for f in ("report.md", "loss.png", "eval.png", "final/config.json"):
        assert (run / f).exists(), f
    model = nt.load_hf(run / "final")
    ids = nt.random_tokens(SPEC.vocab, 2, 20, seed=4)
    ours = nt.cli_logits(run / "final", ids, tmp_path / "lg")
    torch.testing.assert_close(ours, nt.hf_logits(model, ids), rtol=0, atol=1e-4)


def held_run(work, out, steps, hold_after):
    """A distill run that waits after step `hold_after` until it is signalled
    (MINIPUZZLE_TEST_HOLD_AFTER_STEP): the signal lands mid-run on any machine."""
    cmd = [nt.minipuzzle_bin(), *[str(a) for a in distill_args(work, out, steps)]]
    env = dict(os.environ, MINIPUZZLE_TEST_HOLD_AFTER_STEP=str(hold_after))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(proc, run: Path, step: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and any(s == step for s, *_ in step_losses(run)):
            return
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"the run did not reach step {step} (exit {proc.returncode}): {err[-2000:]}")


def test_sigint_checkpoints_and_resume_matches(work, tmp_path):
    full = tmp_path / "full"
    nt.run_cli(*distill_args(work, full, 12))
    part = tmp_path / "part"
    proc = held_run(work, part, 12, hold_after=1)
    wait_for_step(proc, part, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert [s for s, *_ in step_losses(part)] == [1, 2], "SIGINT during the hold after step 1 stops after step 2"
    ckpts = sorted(p.name for p in (part / "checkpoints").iterdir())
    assert ckpts and all(not n.startswith(".") for n in ckpts), ckpts
    nt.run_cli(*distill_args(work, part, 12), "--resume")
    assert step_losses(part) == step_losses(full)


def test_user_errors(work, tmp_path):
    cases = [
        (["--global-batch", 3], "--global-batch"),
        (["--loss", "kl_both"], "kl_both"),
        (["--schedule", "linear"], "--schedule"),
        (["--temperature", 0], "--temperature"),
        (["--warmup", 100], "--warmup"),
        (["--dtype", "fp16"], "loss scaling"),
        (["--seed", -1], "--seed"),
        (["--stop-at-step", -1], "--stop-at-step"),
    ]
    r = nt.run_cli("distill", "--teacher", work["teacher"], "--out", tmp_path / "m", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--student" in r.stderr, r.stderr
    for extra, needle in cases:
        out = tmp_path / "e"
        r = nt.run_cli(*distill_args(work, out, 6, *extra), check=False)
        assert r.returncode == 2, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
        assert not (out / "checkpoints").exists()
    # A student with another vocabulary.
    other = nt.SPECS_BY_NAME["m_a_f_g1"]
    stranger = nt.save_checkpoint(nt.build_model(other), other, tmp_path / "stranger", "hub")
    r = nt.run_cli("distill", "--teacher", work["teacher"], "--student", stranger, "--data", work["data"],
                   "--out", tmp_path / "v", "--seq-len", 32, check=False)
    assert r.returncode == 2 and "vocab" in r.stderr, r.stderr
    # Token ids beyond the vocabulary are found only when windows are read,
    # after the run directory is set up: it goes again, so the corrected
    # rerun needs no --resume (into a new directory and into an existing one).
    bad = write_dataset(tmp_path / "bad", [np.full(900, SPEC.vocab + 5)])
    for out in (tmp_path / "b", tmp_path / "given"):
        if out.name == "given":
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        r = nt.run_cli(*[bad if a == work["data"] else a for a in distill_args(work, out, 2)], check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "vocab" in r.stderr, r.stderr
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert left == ([] if out.name == "b" else ["notes.txt"]), left
        nt.run_cli(*distill_args(work, out, 2))
    # An existing run without --resume.
    run = tmp_path / "r"
    nt.run_cli(*distill_args(work, run, 2))
    r = nt.run_cli(*distill_args(work, run, 2), check=False)
    assert r.returncode == 2 and "--resume" in r.stderr, r.stderr


def test_two_ranks_match_one_process(work, tmp_path):
    """torchrun --no-python with 2 CPU ranks (Gloo): the same losses and final
    weights as one process on the same global batch, up to float summation order."""
    import shutil
    import sys
    torchrun = Path(sys.executable).parent / "torchrun"
    assert torchrun.exists(), f"{torchrun} missing: the torch wheel installs it (rerun tools/setup.sh)"
    single = tmp_path / "single"
    nt.run_cli(*distill_args(work, single, 4))
    multi = tmp_path / "multi"
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(torchrun), "--no-python", "--nproc-per-node", "2", "--master-port", str(port), nt.minipuzzle_bin(),
           *[str(a) for a in distill_args(work, multi, 4)]]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = step_losses(single), step_losses(multi)
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (sa, la, ga, ta), (sb, lb, gb, tb) in zip(a, b):
        assert ta == tb
        assert abs(la - lb) <= 1e-5 * max(1.0, abs(la)), (sa, la, lb)
        assert abs(ga - gb) <= 1e-4 * max(1.0, abs(ga)), (sa, ga, gb)
    from safetensors.torch import load_file
    wa, wb = load_file(str(single / "final" / "model.safetensors")), load_file(str(multi / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_sigkill_then_resume_is_bit_identical(work, tmp_path):
    """SIGKILL after step 5 (no chance to checkpoint; the step-4 checkpoint
    may still be being written): --resume restarts from the last whole
    periodic checkpoint and the loss curve equals an uninterrupted run's,
    bit for bit."""
    full = tmp_path / "full"
    nt.run_cli(*distill_args(work, full, 10))
    part = tmp_path / "part"
    proc = held_run(work, part, 10, hold_after=5)
    wait_for_step(proc, part, 5)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    nt.run_cli(*distill_args(work, part, 10), "--resume")
    assert step_losses(part) == step_losses(full)


def test_train_from_scratch_learns_a_repetitive_text(work, tmp_path):
    data = write_dataset(tmp_path / "cyclic", [np.arange(4000) % 37])
    run = tmp_path / "train"
    nt.run_cli("train", "--student", work["student"], "--data", data, "--out", run, "--steps", 30, "--seq-len", 32,
               "--micro-batch", 4, "--global-batch", 4, "--lr", "1e-2", "--min-lr", "1e-3", "--warmup", 2,
               "--eval-tokens", 256)
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals[-1]["loss"] < 0.5 * evals[0]["loss"], evals
    assert "kl" not in evals[-1]
    assert (run / "final" / "config.json").exists()
    # No teacher, so no KD settings: recorded nowhere, refused as flags.
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["mode"] == "train" and not {"kd_loss", "temperature", "teacher"} & set(run_json), run_json
    for extra in (["--teacher", work["teacher"]], ["--loss", "jsd"], ["--temperature", 2]):
        r = nt.run_cli("train", *extra, "--student", work["student"], "--data", data, "--out", tmp_path / "x",
                       check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(extra[0]).lstrip("-") in r.stderr and not (tmp_path / "x").exists(), r.stderr
    usage = nt.run_cli("train", "--help").stdout
    assert "--resume" in usage and "--teacher" not in usage, usage
