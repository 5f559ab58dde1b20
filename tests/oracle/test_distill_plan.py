"""`minipuzzle distill --plan`: each rank's bytes by kind from the configs
alone (table and JSON), the refusals of a run that cannot start (exit 2, one
line, nothing written), and the planner's figures for --shard none against
the bytes the ranks of a real run hold, as they log them (`state_bytes` in
the first step record of metrics.jsonl): one process in fp32 and bf16, and
two torchrun ranks on Gloo in bf16."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nemotron_tiny as nt
from test_distill_cli import distill_work  # noqa: E402

SPEC = nt.SPECS_BY_NAME["g2_state32"]
KINDS = ["teacher_weights", "student_weights", "gradients", "master", "moments", "buckets"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return distill_work(tmp_path_factory.mktemp("plan"))


def shape_args():
    return ["--seq-len", 32, "--micro-batch", 2]


def plan(work, *extra) -> dict:
    r = nt.run_cli("distill", "--plan", "--json", "--teacher", work["teacher"], "--student", work["student"],
                   *shape_args(), *extra)
    return json.loads(r.stdout)


def run_args(work, out, *extra):
    return ["distill", "--teacher", work["teacher"], "--student", work["student"], "--data", work["data"],
            "--out", out, "--steps", 2, *shape_args(), "--global-batch", 4, "--eval-tokens", 64, *extra]


def first_state_bytes(run: Path) -> list[dict]:
    for line in (run / "metrics.jsonl").read_text().splitlines():
        j = json.loads(line)
        if not j.get("eval"):
            assert j["step"] == 1
            return j["state_bytes"]
    raise AssertionError("no step record")


def assert_matches(measured: dict, planned: dict):
    for kind in KINDS:
        m, p = measured[kind], planned[kind]
        assert abs(m - p) <= 0.10 * p, (kind, m, p)
        if p == 0:
            assert m == 0, (kind, m)


def test_plan_from_configs_alone(work, tmp_path):
    # Only the config.json files: no weights are read.
    for name in ("teacher", "student"):
        (tmp_path / name).mkdir()
        shutil.copy(work[name] / "config.json", tmp_path / name / "config.json")
    args = ["distill", "--plan", "--teacher", tmp_path / "teacher", "--student", tmp_path / "student" / "config.json",
            *shape_args(), "--world-size", 4, "--shard", "optimizer", "--device-memory", "1GiB"]
    text = nt.run_cli(*args).stdout
    for needle in ("teacher weights", "student weights", "gathered-block buffers", "gradients", "fp32 master",
                   "moments", "activations", "KD loss", "communication buckets", "peak", "fits",
                   "--shard optimizer"):
        assert needle in text, (needle, text)
    j = json.loads(nt.run_cli(*args, "--json").stdout)
    assert j["world_size"] == 4 and j["shard"] == "optimizer"
    T, S = j["teacher"]["parameters"], j["student"]["parameters"]
    b = j["bytes"]
    # CPU, fp32: teacher 4T, student 4S + gradients 4S, no separate master, moments 8S/N.
    assert b["teacher_weights"] == 4 * T and b["student_weights"] == 4 * S and b["gradients"] == 4 * S
    assert b["master"] == 0 and b["moments"] == 8 * S / 4
    assert j["fits"] is True and j["smallest_world_size"]["none"] == 1 and j["smallest_shard_level"] == "none"


def test_world_size_defaults_to_the_launchers(work, monkeypatch):
    assert plan(work)["world_size"] == 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert plan(work)["world_size"] == 3
    assert plan(work, "--world-size", 5)["world_size"] == 5


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_rank_holds_what_the_plan_says(work, tmp_path, dtype):
    run = tmp_path / "run"
    nt.run_cli(*run_args(work, run, "--dtype", dtype))
    measured = first_state_bytes(run)
    assert len(measured) == 1 and measured[0]["rank"] == 0
    assert_matches(measured[0], plan(work, "--dtype", dtype, "--world-size", 1)["bytes"])


def test_two_ranks_hold_what_the_plan_says(work, tmp_path):
    """bf16 (master and the buckets' fp32 scratch on top of fp32's kinds; the
    sharded levels' two-rank figures in both dtypes: test_sharded_distill.py)."""
    dtype = "bf16"
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not in the venv")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = tmp_path / "run"
    cmd = [str(torchrun), "--no-python", "--nproc-per-node", "2", "--master-port", str(port), nt.minipuzzle_bin(),
           *[str(a) for a in run_args(work, run, "--dtype", dtype)]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    measured = first_state_bytes(run)
    assert [m["rank"] for m in measured] == [0, 1]
    planned = plan(work, "--dtype", dtype, "--world-size", 2)["bytes"]
    assert planned["buckets"] > 0  # the all-reduce's fp32 copy of the gradients
    for m in measured:
        assert_matches(m, planned)


def one_line_exit_2(r, needle):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_refusals(work, tmp_path):
    base = ["distill", "--plan", "--teacher", work["teacher"], "--student", work["student"]]
    one_line_exit_2(nt.run_cli(*base, "--shard", "zero3", check=False), "unknown shard level 'zero3'")
    one_line_exit_2(nt.run_cli(*base, "--world-size", 0, check=False), "--world-size")
    one_line_exit_2(nt.run_cli(*base, "--device-memory", "lots", check=False), "--device-memory")
    one_line_exit_2(nt.run_cli("distill", "--plan", "--student", work["student"], check=False), "--teacher")
    # A plan that does not fit is information, not an error.
    r = nt.run_cli(*base, "--device-memory", "1KiB")
    assert "does NOT fit" in r.stdout and "smallest world size that fits" in r.stdout, r.stdout
    # Runs that cannot start: refused before anything is written.
    cases = [(["--device-memory", "1KiB"], "smallest world size that fits at --shard none: no world size fits"),
             (["--world-size", 2], "--world-size 2 but the launcher started 1 rank"),
             (["--json"], "--json prints a plan")]
    for extra, needle in cases:
        out = tmp_path / "never"
        r = nt.run_cli(*run_args(work, out, *extra), check=False)
        one_line_exit_2(r, needle)
        assert not out.exists(), extra
    # The refusal names the smallest shard level that fits at this world size.
    small = plan(work, "--shard", "parameters", "--world-size", 1)["bytes"]["peak"]
    r = nt.run_cli(*run_args(work, tmp_path / "never", "--device-memory", int(small * 0.999)), check=False)
    one_line_exit_2(r, "smallest shard level that fits at 1 rank: no level fits")
    # Enough memory: the run goes ahead.
    nt.run_cli(*run_args(work, tmp_path / "ok", "--device-memory", "1GiB"))


def test_a_teacher_cache_replaces_the_teachers_weights_and_output(work, tmp_path):
    cache = tmp_path / "cache"
    nt.run_cli("teacher-logits", work["teacher"], "--data", work["data"], "--top-k", 8, "--out", cache,
               "--seq-len", 32, "--windows", 16)
    j = json.loads(nt.run_cli("distill", "--plan", "--json", "--teacher-cache", cache, "--student", work["student"],
                              *shape_args()).stdout)
    assert j["teacher"] is None and j["teacher_cache"]["k"] == 8
    b = j["bytes"]
    assert b["teacher_weights"] == 0 and j["activations"]["teacher_hidden"] == 0
    assert b["teacher_cache_batch"] == 2 * 32 * (8 * (4 + 8) + 4)  # fp32 values, int64 ids, fp32 rest per token
    run = tmp_path / "run"
    nt.run_cli("distill", "--teacher-cache", cache, "--student", work["student"], "--data", work["data"], "--out", run,
               "--steps", 2, *shape_args(), "--global-batch", 4, "--eval-tokens", 64)
    assert_matches(first_state_bytes(run)[0], b)
    one_line_exit_2(nt.run_cli("distill", "--plan", "--teacher-cache", tmp_path, "--student", work["student"],
                               check=False), "cache.json")
