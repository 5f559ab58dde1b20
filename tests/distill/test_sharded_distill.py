"""`minipuzzle distill --shard optimizer|gradients|parameters` (ZeRO stages
1-3) on Gloo, CPU, fp32, with 2 and 4 ranks started as the launcher would
(RANK, WORLD_SIZE, MASTER_ADDR/PORT): the same per-step losses and the same
weights as `--shard none` at the same world size; each rank holds 1/N of the
master and moments (state_bytes in metrics.jsonl), at `gradients` no
full-size gradient, at `parameters` 1/N of each model's weights plus two
gathered units; the planner's figures match those bytes within 10%;
sharded checkpoints (one file per rank + a manifest) resume bit for bit and
at another world size; a rank dying mid-checkpoint leaves the previous one
the latest; --bucket-size cuts the parameters level's reduces; bad input
exits 2 with one line. Each run is made once and shared (the `runs`
fixture): keep new tests on the 3-step runs it already has."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
import nemotron_tiny as nt  # noqa: E402
from test_distill_cli import distill_work  # noqa: E402

SPEC = nt.SPECS_BY_NAME["g2_state32"]
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return distill_work(tmp_path_factory.mktemp("shard"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distill_args(work, out, steps, *extra, bucket="4KiB"):
    # 4 KiB buckets: many per rank, cut inside parameters and at the ranks' ranges.
    return ["distill", "--teacher", work["teacher"], "--student", work["student"], "--data", work["data"],
            "--out", out, "--steps", steps, "--seq-len", 32, "--micro-batch", 1, "--global-batch", 4,
            "--lr", "3e-3", "--min-lr", "3e-4", "--warmup", 1, "--eval-tokens", 64, "--bucket-size", bucket, *extra]


def run_ranks(world, args, check=True, timeout=300, **extra_env):
    port = free_port()
    procs = []
    for r in range(world):
        env = {k: v for k, v in os.environ.items() if not k.startswith(RANK_VARS)}
        env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", **extra_env)
        procs.append(subprocess.Popen([nt.minipuzzle_bin(), *[str(a) for a in args]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    codes = [p.returncode for p in procs]
    if check:
        assert codes == [0] * world, [e[-2000:] for _, e in outs]
    return codes, [e for _, e in outs]


def records(run: Path):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if not json.loads(l).get("eval")]


def weights(run: Path, sub="final"):
    from safetensors.numpy import load_file
    return load_file(str(run / sub / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(work):
    """Runs by (world, level, dtype), made once."""
    cache = {}

    def get(world, level, dtype="fp32", steps=3):
        key = (world, level, dtype, steps)
        if key not in cache:
            out = work["root"] / f"w{world}-{level}-{dtype}-{steps}"
            run_ranks(world, distill_args(work, out, steps, "--shard", level, "--dtype", dtype))
            cache[key] = out
        return cache[key]
    return get


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_levels_match_none(runs, world):
    none = runs(world, "none")
    # At 4 ranks `gradients` alone: `optimizer` runs the same reduce into
    # the owners (only what it keeps of the gradients differs).
    for level in ("optimizer", "gradients") if world == 2 else ("gradients",):
        run = runs(world, level)
        a, b = records(none), records(run)
        assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
        for x, y in zip(a, b):
            assert x["tokens"] == y["tokens"]
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=0), (level, x["step"])
            assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-6, abs=0), (level, x["step"])
        wa, wb = weights(none), weights(run)
        assert wa.keys() == wb.keys()
        for k in wa:
            if world == 2:
                # a + b is b + a: the reduce into the owner sums as the all-reduce does, bit for bit.
                assert np.array_equal(wa[k], wb[k]), (level, k)
                continue
            # 4 ranks: Gloo's all-reduce and reduce add the four terms in other
            # orders; AdamW turns the rounding of gradients that nearly cancel
            # into ~1e-5 in a few elements, so the bound is per tensor.
            x, y = wa[k].astype(np.float64), wb[k].astype(np.float64)
            assert np.linalg.norm(x - y) <= 1e-6 * np.linalg.norm(x), (level, k, np.linalg.norm(x - y) / np.linalg.norm(x))
            assert np.abs(x - y).max() <= 1e-4, (level, k)
        # The checkpoint holds every rank's shard and the manifest, no whole optimizer.
        ckpt = run / "checkpoints" / "step-00000003"
        manifest = json.loads((ckpt / "optimizer_manifest.json").read_text())
        assert manifest["world_size"] == world and manifest["shard"] == level
        assert [f["file"] for f in manifest["files"]] == [f"optimizer-{r:05d}-of-{world:05d}.safetensors"
                                                          for r in range(world)]
        for f in manifest["files"]:
            assert (ckpt / f["file"]).stat().st_size == f["bytes"]
        assert not (ckpt / "optimizer.safetensors").exists()


def test_gradients_level_never_holds_a_full_gradient(runs):
    """One micro-batch per rank and step (4 ranks, global batch 4): at
    `gradients` each .grad goes as soon as its buckets are copied out, so the
    most gradient bytes a rank holds at once in backward (gradients_peak, seen
    from the accumulation hooks, plus its gradient shard) stay below one
    full-size gradient; at `optimizer` (2 ranks) the same measure sees all of it."""
    S = sum(w.size for w in weights(runs(4, "none")).values())
    for level, world in (("optimizer", 2), ("gradients", 4)):
        for m in records(runs(world, level))[0]["state_bytes"]:
            if level == "gradients":
                assert m["gradients_peak"] < 0.75 * 4 * S, (m, S)
                assert m["gradients"] == 4 * (-(-S // 4))  # after the step: the shard alone
            else:
                assert m["gradients_peak"] >= 4 * S, (m, S)


def plan_bytes(work, world, level, dtype):
    r = nt.run_cli("distill", "--plan", "--json", "--teacher", work["teacher"], "--student", work["student"],
                   "--seq-len", 32, "--micro-batch", 1, "--world-size", world, "--shard", level, "--dtype", dtype,
                   "--bucket-size", "4KiB")
    return json.loads(r.stdout)


# fp32; bf16 adds the master (4 bytes an element, the same ShardedAdamW
# ranges): test_parameters_level_holds_a_shard_and_two_units[2-bf16].
@pytest.mark.parametrize("level,dtype", [("optimizer", "fp32"), ("gradients", "fp32")])
def test_each_rank_holds_its_share(work, runs, level, dtype):
    world = 2
    run = runs(world, level, dtype)
    measured = records(run)[0]["state_bytes"]
    plan = plan_bytes(work, world, level, dtype)
    S = plan["student"]["parameters"]
    e = 4 if dtype == "fp32" else 2
    shard = -(-S // world)  # ceil: the ranges are padded to equal length
    assert len(measured) == world
    for m in measured:
        # Master + moments: 1/N of the whole plus at most the padding.
        whole = (0 if dtype == "fp32" else 4) * S + 8 * S
        assert m["master"] + m["moments"] <= whole / world + 12 * (shard * world - S)
        assert m["moments"] == 8 * shard and m["master"] == (0 if dtype == "fp32" else 4 * shard)
        if level == "gradients":
            # No full-size gradient: only this rank's range of it.
            assert m["gradients"] == e * shard and m["gradients"] < e * S
        else:
            assert m["gradients"] == e * S
        for kind in ("master", "moments", "gradients"):
            p = plan["bytes"][kind]
            assert abs(m[kind] - p) <= 0.10 * p if p else m[kind] == 0, (kind, m[kind], p)


def test_stop_and_resume_is_bit_identical(work, runs, tmp_path):
    """Stopped after step 1 and resumed at the same world size: the same
    records and final weights, byte for byte. (`optimizer` writes and reads
    the same per-rank files; its resume is the 4 -> 2 ranks test below.)"""
    world, level = 2, "gradients"
    full = runs(world, level)
    part = tmp_path / "part"
    codes, errs = run_ranks(world, distill_args(work, part, 3, "--shard", level, "--stop-at-step", 1), check=False)
    assert codes == [130] * world, errs
    assert (part / "checkpoints" / "step-00000001" / "optimizer_manifest.json").exists()
    run_ranks(world, distill_args(work, part, 3, "--shard", level, "--resume"))
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in records(part)] == \
           [(r["step"], r["loss"], r["grad_norm"]) for r in records(full)]
    assert (part / "final" / "model.safetensors").read_bytes() == (full / "final" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("before,after,level", [(4, 2, "optimizer")])
def test_resume_at_another_world_size_reshards(work, runs, tmp_path, before, after, level):
    """Stopped after step 1 at one world size, resumed at another: each new
    rank reads its range out of the old ranks' files, and the run goes on as
    an uninterrupted run at the new world size (within float summation order).
    (2 -> 4: test_parameters_level_resumes_at_another_world_size, which reads
    the optimizer state with the same code.)"""
    part = tmp_path / "part"
    codes, errs = run_ranks(before, distill_args(work, part, 3, "--shard", level, "--stop-at-step", 1), check=False)
    assert codes == [130] * before, errs
    run_ranks(after, distill_args(work, part, 3, "--shard", level, "--resume"))
    full = runs(after, level)
    a, b = records(full), records(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=0), x["step"]
    wa, wb = weights(full), weights(part)
    for k in wa:
        x, y = wa[k].astype(np.float64), wb[k].astype(np.float64)
        assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(x), k
    manifest = json.loads((part / "checkpoints" / "step-00000003" / "optimizer_manifest.json").read_text())
    assert manifest["world_size"] == after


def copy_stopped(work, tmp_path, level="optimizer"):
    """A 2-rank run stopped after step 1 (a sharded checkpoint there)."""
    part = tmp_path / "stopped"
    codes, errs = run_ranks(2, distill_args(work, part, 3, "--shard", level, "--stop-at-step", 1), check=False)
    assert codes == [130, 130], errs
    return part


def assert_one_line_exit_2(codes, errs, needle):
    assert codes == [2] * len(codes), errs
    for e in errs:
        assert len(e.strip().splitlines()) == 1 and needle in e, e


def test_bad_input(work, tmp_path):
    # Unknown level.
    r = nt.run_cli(*distill_args(work, tmp_path / "u", 2, "--shard", "stage2"), check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unknown shard level" in r.stderr
    # At `parameters` the student is read range by range: a missing one is refused the same way.
    args = distill_args(work, tmp_path / "p", 2, "--shard", "parameters")
    args[args.index("--student") + 1] = tmp_path / "absent"
    r = nt.run_cli(*args, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "absent" in r.stderr, r.stderr
    assert not (tmp_path / "p").exists()
    # A world size that does not divide the global batch.
    codes, errs = run_ranks(3, distill_args(work, tmp_path / "w3", 2, "--shard", "optimizer"), check=False)
    assert_one_line_exit_2(codes, errs, "multiple of --micro-batch 1 x 3 processes")

    part = copy_stopped(work, tmp_path)
    ckpt = part / "checkpoints" / "step-00000001"
    manifest = ckpt / "optimizer_manifest.json"
    # Another level than the checkpoint's: the run's options differ.
    codes, errs = run_ranks(2, distill_args(work, part, 3, "--shard", "gradients", "--resume"), check=False)
    assert_one_line_exit_2(codes, errs, "shard")
    # A manifest of another layout.
    original = manifest.read_text()
    m = json.loads(original)
    m["layout"]["parameters"][0][1] += 1
    manifest.write_text(json.dumps(m))
    codes, errs = run_ranks(2, distill_args(work, part, 3, "--shard", "optimizer", "--resume"), check=False)
    assert_one_line_exit_2(codes, errs, "optimizer_manifest.json")
    manifest.write_text(original)
    # A truncated shard: every rank stops, naming it.
    shard = ckpt / "optimizer-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    codes, errs = run_ranks(2, distill_args(work, part, 3, "--shard", "optimizer", "--resume"), check=False)
    assert_one_line_exit_2(codes, errs, "optimizer-00001-of-00002.safetensors")
    # The same length, other bytes: the checksum.
    shard.write_bytes(data[:-4] + bytes(4 * [0x5A]))
    codes, errs = run_ranks(2, distill_args(work, part, 3, "--shard", "optimizer", "--resume"), check=False)
    assert_one_line_exit_2(codes, errs, "optimizer-00001-of-00002.safetensors")
    # Missing.
    shard.unlink()
    codes, errs = run_ranks(2, distill_args(work, part, 3, "--shard", "optimizer", "--resume"), check=False)
    assert_one_line_exit_2(codes, errs, "optimizer-00001-of-00002.safetensors")


# --shard parameters (ZeRO-3): weights as 1/N ranges, gathered unit by unit.

def unit_numels(w):
    """Elements per unit of --shard parameters, in order: the embedding, each
    block, the head (norm_f + lm_head)."""
    units = {}
    for k, v in w.items():
        if k.startswith("backbone.embeddings."):
            u = -1
        elif k.startswith("backbone.layers."):
            u = int(k.split(".")[2])
        else:
            u = 1 << 30
        units[u] = units.get(u, 0) + v.size
    return [units[k] for k in sorted(units)]


def largest_pair(units):
    return max(a + b for a, b in zip(units, units[1:]))


@pytest.mark.parametrize("world", [2, 4])
def test_parameters_level_matches_none(runs, world):
    """The same losses, gradient norms and weights as `none`. The sums differ
    in order only: the units' gradients reduce once per micro-batch (none
    accumulates the step's micro-batches on each rank, then all-reduces), so
    the bound is the 4-rank one of the other levels, per tensor."""
    none, run = runs(world, "none"), runs(world, "parameters")
    a, b = records(none), records(run)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"]
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=0), x["step"]
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-6, abs=0), x["step"]
    wa, wb = weights(none), weights(run)
    assert wa.keys() == wb.keys()
    for k in wa:
        x, y = wa[k].astype(np.float64), wb[k].astype(np.float64)
        assert np.linalg.norm(x - y) <= 1e-6 * np.linalg.norm(x), (k, np.linalg.norm(x - y) / np.linalg.norm(x))
        assert np.abs(x - y).max() <= 1e-4, k
    # The evaluations (every rank gathers, also one without windows) agree too.
    ea = [r for r in map(json.loads, (none / "metrics.jsonl").read_text().splitlines()) if r.get("eval")]
    eb = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("eval")]
    assert len(ea) == len(eb) == 2
    for x, y in zip(ea, eb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["kl"] == pytest.approx(x["kl"], rel=1e-4, abs=1e-9)
    ckpt = run / "checkpoints" / "step-00000003"
    manifest = json.loads((ckpt / "optimizer_manifest.json").read_text())
    assert manifest["world_size"] == world and manifest["shard"] == "parameters"
    # The checkpoint's weights, written tensor by tensor, are the final weights (fp32 run).
    wc = weights(run, "checkpoints/step-00000003")
    assert all(np.array_equal(wc[k], wb[k]) for k in wb)


@pytest.mark.parametrize("world,dtype", [(2, "fp32"), (2, "bf16"), (4, "fp32")])
def test_parameters_level_holds_a_shard_and_two_units(work, runs, world, dtype):
    """Each rank holds 1/N of each model's weights (its range of the flat
    layout) and at most two neighbouring units of a model gathered at once
    (the teacher's head stays for the loss while the student's run); the
    planner's figures match the logged bytes within 10%."""
    run = runs(world, "parameters", dtype)
    measured = records(run)[0]["state_bytes"]
    plan = plan_bytes(work, world, "parameters", dtype)
    S, T = plan["student"]["parameters"], plan["teacher"]["parameters"]
    e = 4 if dtype == "fp32" else 2
    su, tu = unit_numels(weights(runs(world, "none"))), unit_numels(weights_of(work["teacher"]))
    assert sum(su) == S and sum(tu) == T
    assert len(measured) == world
    for m in measured:
        assert m["student_weights"] == e * -(-S // world) and m["teacher_weights"] == e * -(-T // world)
        # Student weights held at once: its range plus two neighbouring units
        # (a unit may be the embedding or the head, the largest here).
        assert m["student_weights"] + m["gathered_blocks"] <= e * (-(-S // world) + largest_pair(su) + tu[-1])
        assert m["gathered_blocks"] == e * max(largest_pair(tu), tu[-1] + largest_pair(su))
        # No full-size gradient, master or moments: the ranges only.
        assert m["gradients"] == e * -(-S // world)
        assert m["moments"] == 8 * -(-S // world) and m["master"] == (0 if dtype == "fp32" else 4 * -(-S // world))
        assert m["buckets"] <= 4 * largest_pair(su)
        for kind in ("teacher_weights", "student_weights", "gathered_blocks", "gradients", "master", "moments",
                     "buckets"):
            p = plan["bytes"][kind]
            assert abs(m[kind] - p) <= 0.10 * p if p else m[kind] == 0, (kind, m[kind], p)


def test_parameters_level_reduces_in_buckets_of_the_bucket_size(work, runs, tmp_path):
    """A unit's gradient reduces in fp32 buckets of at most --bucket-size, two
    in flight: with 4 KiB buckets (every unit cut into many) each rank holds
    exactly two buckets at once; with buckets larger than any unit, the two
    largest neighbouring units. The planner says the same, and the weights
    do not depend on the cut (two ranks: a + b either way, bit for bit)."""
    small = runs(2, "parameters")
    large = tmp_path / "large"
    run_ranks(2, distill_args(work, large, 3, "--shard", "parameters", bucket="1MiB"))
    su = unit_numels(weights(runs(2, "none")))
    assert max(su) * 4 < 1 << 20 and min(su) * 4 > 2 * 4096
    for run, bucket, held in ((small, "4KiB", 2 * 4096), (large, "1MiB", 4 * largest_pair(su))):
        plan = json.loads(nt.run_cli("distill", "--plan", "--json", "--teacher", work["teacher"], "--student",
                                     work["student"], "--seq-len", 32, "--micro-batch", 1, "--world-size", 2,
                                     "--shard", "parameters", "--bucket-size", bucket).stdout)
        assert plan["bytes"]["buckets"] == held, bucket
        assert [m["buckets"] for m in records(run)[0]["state_bytes"]] == [held, held], bucket
    assert [(r["loss"], r["grad_norm"]) for r in records(small)] == [(r["loss"], r["grad_norm"]) for r in records(large)]
    assert (small / "final" / "model.safetensors").read_bytes() == (large / "final" / "model.safetensors").read_bytes()


def weights_of(model_dir):
    from safetensors.numpy import load_file
    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_parameters_level_resumes_at_another_world_size(work, runs, tmp_path):
    """Stopped after step 1 on 2 ranks, resumed on 4: each new rank reads its
    range of the weights and of the optimizer state out of the old ranks'
    files; the run goes on as an uninterrupted one on 4 ranks. (4 -> 2 reads
    the same files the other way; the optimizer level's test does it.)"""
    before, after = 2, 4
    part = tmp_path / "part"
    codes, errs = run_ranks(before, distill_args(work, part, 3, "--shard", "parameters", "--stop-at-step", 1),
                            check=False)
    assert codes == [130] * before, errs
    run_ranks(after, distill_args(work, part, 3, "--shard", "parameters", "--resume"))
    full = runs(after, "parameters")
    a, b = records(full), records(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=0), x["step"]
    wa, wb = weights(full), weights(part)
    for k in wa:
        x, y = wa[k].astype(np.float64), wb[k].astype(np.float64)
        assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(x), k
    manifest = json.loads((part / "checkpoints" / "step-00000003" / "optimizer_manifest.json").read_text())
    assert manifest["world_size"] == after and manifest["shard"] == "parameters"


def test_a_rank_dying_mid_checkpoint_leaves_the_previous_one_latest(work, runs, tmp_path):
    """Rank 1 is SIGKILLed while it writes its part of step 2's checkpoint
    (MINIPUZZLE_TEST_DIE_IN_CHECKPOINT: half its optimizer shard on disk).
    Rank 0 fails in the next collective and exits 1 with one line, in seconds
    (not the 10-minute collective timeout); the newest complete checkpoint is
    step 1, its manifest naming every part with the size and CRC-32 on disk;
    --resume from it finishes with the final weights of an uninterrupted run,
    byte for byte (the same-size resume test of this level), and removes the
    half-written staging directory. On the way, that checkpoint with its
    weights file truncated is refused (exit 2, one line naming it)."""
    full = runs(2, "parameters")
    part = tmp_path / "died"
    args = distill_args(work, part, 3, "--shard", "parameters", "--save-every", 1)
    t0 = time.monotonic()
    codes, errs = run_ranks(2, args, check=False, timeout=120, MINIPUZZLE_TEST_DIE_IN_CHECKPOINT="1:2")
    assert time.monotonic() - t0 < 60, errs
    assert codes == [1, -signal.SIGKILL], (codes, errs)
    lines = errs[0].strip().splitlines()
    assert len(lines) == 1 and "terminate called" not in errs[0], errs[0]
    ck = part / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if not p.name.startswith(".")) == ["step-00000001"]
    assert (ck / ".step-00000002.shards").is_dir()  # where the dead rank's half part lies
    latest = ck / "step-00000001"
    assert json.loads((latest / "trainer_state.json").read_text())["step"] == 1
    manifest = json.loads((latest / "optimizer_manifest.json").read_text())
    assert manifest["step"] == 1 and manifest["world_size"] == 2 and len(manifest["files"]) == 2
    for f in manifest["files"]:
        data = (latest / f["file"]).read_bytes()
        assert len(data) == f["bytes"] and zlib.crc32(data) == f["crc32"], f
    # Each rank reads its range of the student out of that checkpoint: a
    # truncated weights file stops every rank with one line naming it.
    weights_file = latest / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:-64])
    codes, errs = run_ranks(2, [*args, "--resume"], check=False)
    assert_one_line_exit_2(codes, errs, "model.safetensors")
    weights_file.write_bytes(data)
    run_ranks(2, [*args, "--resume"])
    assert (part / "final" / "model.safetensors").read_bytes() == (full / "final" / "model.safetensors").read_bytes()
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]
