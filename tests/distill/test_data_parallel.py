"""Data-parallel training over two real processes (c10d Gloo on CPU).

dp_worker (tests/distill/dp_worker.cpp) runs one optimizer step of a tiny
HybridLM following the contract of data_parallel.h. The oracle is the same
worker run as a single process over the whole batch: the averaged gradient
of two ranks must equal it (up to float summation order), the AdamW step
must match, and both replicas must hold identical results. A rank that
stalls or dies must make the other fail within the timeout, not hang.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = os.environ.get("DP_WORKER", "")
if not WORKER or not Path(WORKER).exists():
    pytest.fail("DP_WORKER not set or not built: run through ctest", pytrace=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world, port, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC"))}
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def single_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC"))}


def load(prefix, rank):
    p = Path(f"{prefix}.rank{rank}")
    return (np.fromfile(f"{p}.grad", np.float32), np.fromfile(f"{p}.param", np.float32),
            json.loads(Path(f"{p}.json").read_text()))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("single") / "out"
    r = subprocess.run([WORKER, str(prefix), "--batch", "4"], env=single_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    grad, param, meta = load(prefix, 0)
    assert meta["world_size"] == 1 and meta["backend"] == "none"
    return grad, param, meta


def run_ranks(prefix, world, args=(), timeout=300):
    port = free_port()
    procs = [subprocess.Popen([WORKER, str(prefix), "--batch", "4", *args], env=rank_env(r, world, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return procs, outs


def check_against_single(prefix, world, single):
    s_grad, s_param, s_meta = single
    grads = []
    for r in range(world):
        grad, param, meta = load(prefix, r)
        assert meta["world_size"] == world and meta["backend"] == "gloo"
        assert grad.shape == s_grad.shape
        np.testing.assert_allclose(grad, s_grad, rtol=0, atol=1e-6)
        np.testing.assert_allclose(param, s_param, rtol=0, atol=1e-6)
        assert meta["loss"] == pytest.approx(s_meta["loss"], rel=1e-6)
        assert meta["grad_norm"] == pytest.approx(s_meta["grad_norm"], rel=1e-6)
        grads.append((grad, param))
    for grad, param in grads[1:]:  # replicas are bit-identical
        assert np.array_equal(grad, grads[0][0]) and np.array_equal(param, grads[0][1])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The all-reduce after backward, by world size: made once."""
    cache = {}

    def get(world):
        if world not in cache:
            prefix = tmp_path_factory.mktemp(f"dp{world}") / "dp"
            procs, outs = run_ranks(prefix, world)
            for p, (out, err) in zip(procs, outs):
                assert p.returncode == 0, err
                assert f"of {world} (gloo)" in out
            cache[world] = prefix
        return cache[world]
    return get


@pytest.mark.parametrize("world", [2, 4])
def test_averaged_gradient_equals_single_process(plain, single, world):
    check_against_single(plain(world), world, single)


def test_all_reduce_overlapped_with_backward_gives_the_same_bits(tmp_path, plain, single):
    """Buckets summed while backward runs (the trainer's default) equal the
    all-reduce after backward bit for bit, and the single process up to float
    order. (Two ranks: the bucket logic does not depend on their number.)"""
    world = 2
    after, during, early = plain(world), tmp_path / "during", tmp_path / "early"
    # early: armed before the first micro-batch, so buckets start with partial
    # gradients and must be summed again from the final ones.
    for prefix, args in ((during, ("--overlap", "1")), (early, ("--overlap", "early"))):
        procs, outs = run_ranks(prefix, world, args)
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err
    check_against_single(during, world, single)
    for r in range(world):
        g_after, p_after, _ = load(after, r)
        for prefix in (during, early):
            g, p, _ = load(prefix, r)
            assert np.array_equal(g_after, g) and np.array_equal(p_after, p), prefix.name


def test_batch_not_divisible_is_a_clear_error(tmp_path):
    procs, outs = run_ranks(tmp_path / "bad", 3)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 1
        assert "multiple of --micro-batch 1 x 3 processes" in err


def test_torchrun_launch(tmp_path, single):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    assert Path(torchrun).exists(), f"{torchrun} missing: the torch wheel installs it (rerun tools/setup.sh)"
    prefix = tmp_path / "tr"
    r = subprocess.run([torchrun, "--no-python", "--nproc-per-node", "2", "--master-port", str(free_port()),
                        WORKER, str(prefix), "--batch", "4"], env=single_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    check_against_single(prefix, 2, single)


def wait_joined(proc, deadline):
    line = proc.stdout.readline()
    assert "joined" in line, line
    assert time.monotonic() < deadline


def test_stalled_rank_times_out_instead_of_hanging(tmp_path):
    port = free_port()
    args = ["--timeout-s", "5", "--stall-rank", "1"]
    procs = [subprocess.Popen([WORKER, str(tmp_path / "st"), "--batch", "4", *args], env=rank_env(r, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        elapsed = time.monotonic() - start
        assert procs[0].returncode == 1, err
        assert "failed on rank 0" in err and "imed out" in err, err
        assert elapsed < 40
    finally:
        procs[1].kill()
        procs[1].wait()


def test_killed_rank_makes_the_other_fail(tmp_path):
    port = free_port()
    args = ["--timeout-s", "10", "--stall-rank", "1"]
    procs = [subprocess.Popen([WORKER, str(tmp_path / "k"), "--batch", "4", *args], env=rank_env(r, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 60
        for p in procs:
            wait_joined(p, deadline)
        time.sleep(1)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 1, err
        assert "failed on rank 0" in err, err
        assert time.monotonic() - start < 20  # within the 10 s timeout (+ slack), not a hang
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_missing_rank_fails_at_rendezvous(tmp_path):
    start = time.monotonic()
    r = subprocess.run([WORKER, str(tmp_path / "m"), "--timeout-s", "3"], env=rank_env(0, 2, free_port()),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "setup failed on rank 0" in r.stderr, r.stderr
    assert time.monotonic() - start < 60
