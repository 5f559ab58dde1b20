"""Crash consistency (issue 8): every command that writes files is killed with
SIGKILL at many seeded random moments, and run on a full disk.

Kill at random (``test_kill_at_random[CASE]``), for each row of ``CASES``:

1. an uninterrupted reference run, timed, with the moments at which its files
   appear recorded (the output tree is polled every few ms);
2. ``MINIPUZZLE_CRASH_KILLS`` attempts (default 10) on one output path, each
   SIGKILLed after a seeded random delay: a quarter uniform over the run's
   duration, a quarter over its duration past the process start-up (the
   duration: the reference's, or less once an unkilled fresh attempt finished
   sooner), half uniform over the reference's writing window counted from
   the moment the attempt's first new file or directory appears (polled every
   ms: start-up jitter would otherwise make the writing a rare target). Each
   attempt runs on what the previous one left (the rerun command: ``--resume``
   for distill/train), so a crash is also a crash of a rerun. An attempt that
   ends before its kill must exit 0.
3. after every attempt the output is, by ``case.state``: absent; clearly
   incomplete (only hidden ``.NAME.partial-PID`` directories, ``NAME.tmp.PID.N``
   files, a ``.bin`` without its ``.idx``, a teacher cache without
   ``cache.json``, a run without ``final/``); or complete, and then valid:
   config.json parses, every safetensors file loads with the ``safetensors``
   package, an index names exactly the shards present and their total size,
   and every file is byte-identical to the reference (JSON equal up to the
   timing fields where a file records seconds). Distill/train checkpoints that
   look complete (``trainer_state.json``) are compared with the reference
   run's checkpoint of the same step, byte for byte, at every attempt. Once
   complete, the output is removed and the next attempt starts afresh.
4. a final uninterrupted rerun on what the last kill left exits 0 and equals
   the reference (distill/train: final weights, checkpoints, optimizer state
   byte-identical, the metrics' losses equal), and no temporary file or
   partial directory is left anywhere under the output's parent.

Seeded: ``MINIPUZZLE_CRASH_SEED`` (default below); a failure names the case,
the seed, the attempt, its delay and the history before it. The delays are
reproducible, the moment they hit in the command's work only roughly (the
machine's speed varies): rerun a failure with more kills rather than expect
the same interleaving.

Full disk (``test_full_disk[...]``, ``test_full_disk_keeps_the_last_checkpoint``):
export (single file and sharded), prune, score, search, data build and a
distill checkpoint write where a file cannot grow: RLIMIT_FSIZE with SIGXFSZ
ignored (write() fails with EFBIG; needs no privileges), and a small tmpfs
(ENOSPC; root only: fails when mount is not permitted). Expected: exit 1 (or 2), one
line on stderr, no output that looks complete, no temporary left behind;
distill keeps its previous checkpoint intact, and an unrestricted
``--resume`` afterwards finishes equal to the reference.

``test_resume_cleans_up_what_a_kill_left``: the states random kills reach
rarely, made by hand (checkpoints beyond --keep-last, stale partials and
temporary files of dead processes, a live process's partial).

Adding a command: one ``Case`` row (argv builder, output name, state check,
final check, optionally rerun argv and reference argv).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from safetensors import safe_open

import nemotron_tiny as nt
from test_score_search import write_dataset

KILLS = int(os.environ.get("MINIPUZZLE_CRASH_KILLS", "10"))
SEED = int(os.environ.get("MINIPUZZLE_CRASH_SEED", "20261123"))

# Byte vocabulary (256 + 3), hidden 64: every command runs in about a second.
SPEC = nt.TinySpec("crash", seed=21, vocab=259, hidden=64, pattern="M*-M-", attn_heads=4, kv_heads=2,
                   attn_head_dim=16, ffn=128, mamba_heads=4, mamba_head_dim=16, state=16, groups=2, chunk=16)

# One thread: timings and results stable on 2 shared cores.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

# Names a killed writer may leave behind (atomic_file.h): hidden partial
# directories and temporary files beside their target.
TEMP_RE = re.compile(r"(^\..*\.partial-\d+$)|(\.tmp\.\d+\.\d+$)")
TIMING_KEYS = {"seconds", "tokens_per_second", "max_rss_bytes"}


def argv(*args) -> list[str]:
    return [nt.minipuzzle_bin(), *[str(a) for a in args]]


# ----------------------------------------------------------------------------
# inputs, made once
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inp(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("crash_inputs")
    teacher = nt.save_checkpoint(nt.build_model(SPEC), SPEC, root / "teacher", "hub")
    rng = np.random.default_rng(3)
    data = write_dataset(root / "data", [rng.integers(0, SPEC.vocab, 1000) for _ in range(8)])
    text = root / "text"
    text.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "mamba", "attention", "layer", "prune", "distill", "token"]
    r = random.Random(1)
    for i in range(40):  # ~2.4 MB: data build takes a few hundred ms
        (text / f"doc{i:03d}.txt").write_text(" ".join(r.choice(words) for _ in range(9000)))
    scores = root / "scores"
    subprocess.run(argv("score", teacher, "--data", data, "--samples", 4, "--seq-len", 32, "--batch", 4,
                        "--out", scores), check=True, env=ENV, capture_output=True)
    student = root / "student"
    subprocess.run(argv("prune", teacher, "--scores", scores, "--set", "drop_layers=1",
                        "--set", "intermediate_size=64", "--out", student), check=True, env=ENV, capture_output=True)
    starts = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(argv("--help"), check=True, env=ENV, capture_output=True)
        starts.append(time.monotonic() - t0)
    return {"root": root, "teacher": teacher, "data": data, "text": text, "scores": scores, "student": student,
            "startup": min(starts)}


# ----------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------

def load_safetensors(path: Path) -> int:
    """Opens a file with the safetensors package and reads every tensor; returns the tensor bytes."""
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            total += t.numel() * t.element_size()
    return total


def same_bytes(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes(), f"{a} differs from the uninterrupted run's {b}"


def strip_timing(j):
    if isinstance(j, dict):
        return {k: strip_timing(v) for k, v in j.items() if k not in TIMING_KEYS}
    if isinstance(j, list):
        return [strip_timing(v) for v in j]
    return j


def check_checkpoint(d: Path, ref: Path) -> None:
    """A complete checkpoint directory, equal to the reference one."""
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(p.name for p in ref.iterdir()), f"{d}: files {names}"
    json.loads((d / "config.json").read_text())
    sizes = {p.name: load_safetensors(p) for p in d.glob("*.safetensors")}
    index = d / "model.safetensors.index.json"
    if index.exists():
        idx = json.loads(index.read_text())
        shards = {n for n in sizes if n.startswith("model")}
        assert set(idx["weight_map"].values()) == shards, f"{index}: names {sorted(set(idx['weight_map'].values()))}"
        assert idx["metadata"]["total_size"] == sum(sizes[n] for n in shards)
    else:
        assert "model.safetensors" in sizes, f"{d}: no weights"
    for n in names:
        same_bytes(d / n, ref / n)


def walk(root: Path) -> list[Path]:
    return [Path(dp) / n for dp, dns, fns in os.walk(root) for n in dns + fns]


def temp_entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in walk(root) if TEMP_RE.search(p.name))


def dir_state(check: Callable[[Path, Path], None]):
    """Output = a directory written as a whole (AtomicDirectory)."""
    def state(out: Path, ref: Path) -> str:
        if out.exists():
            check(out, ref)
            return "complete"
        return "incomplete" if temp_entries(out.parent) else "absent"
    return state


def check_scores(d: Path, ref: Path) -> None:
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted(p.name for p in ref.iterdir()), f"{d}: files {names}"
    load_safetensors(d / "importance.safetensors")
    same_bytes(d / "importance.safetensors", ref / "importance.safetensors")
    same_bytes(d / "layer_importance.png", ref / "layer_importance.png")
    got, want = (strip_timing(json.loads((x / "importance.json").read_text())) for x in (d, ref))
    assert got == want, f"{d}/importance.json differs from the reference"
    lines = (d / "score.log.jsonl").read_text().splitlines()
    assert len(lines) == len((ref / "score.log.jsonl").read_text().splitlines())
    for line in lines:
        json.loads(line)
    assert (d / "report.md").read_text().startswith("#")


def file_state(out: Path, ref: Path) -> str:
    """Output = one file written atomically (AtomicFile); search's candidates.json."""
    if out.exists():
        assert json.loads(out.read_text()) == json.loads(ref.read_text())
        same_bytes(out, ref)
        return "complete"
    return "incomplete" if temp_entries(out.parent) else "absent"


def dataset_state(out: Path, ref: Path) -> str:
    """PREFIX.bin then PREFIX.idx: the .idx is the final marker."""
    b, i = Path(str(out) + ".bin"), Path(str(out) + ".idx")
    rb, ri = Path(str(ref) + ".bin"), Path(str(ref) + ".idx")
    if i.exists():
        assert b.exists(), f"{i} without its .bin"
        same_bytes(b, rb)
        same_bytes(i, ri)
        nt.read_indexed_dataset(out)
        return "complete"
    if b.exists():
        same_bytes(b, rb)  # committed before the .idx: whole
        return "incomplete"
    return "incomplete" if temp_entries(out.parent) else "absent"


_OLD_DATASET: dict = {}


def old_dataset(tmp: Path) -> tuple[bytes, bytes]:
    """Another dataset (.bin, .idx) that data build overwrites in `data_build_overwrite`."""
    if not _OLD_DATASET:
        rng = np.random.default_rng(11)
        prefix = write_dataset(tmp / "old_dataset", [rng.integers(0, 255, 3000) for _ in range(5)])
        _OLD_DATASET["bytes"] = (Path(str(prefix) + ".bin").read_bytes(), Path(str(prefix) + ".idx").read_bytes())
    return _OLD_DATASET["bytes"]


def put_old_dataset(i: dict, out: Path) -> None:
    b, x = old_dataset(i["root"])
    Path(str(out) + ".bin").write_bytes(b)
    Path(str(out) + ".idx").write_bytes(x)


def overwritten_dataset_state(out: Path, ref: Path) -> str:
    """data build over an existing dataset: an .idx never describes another .bin."""
    b, i = Path(str(out) + ".bin"), Path(str(out) + ".idx")
    old = _OLD_DATASET["bytes"]
    new = (Path(str(ref) + ".bin").read_bytes(), Path(str(ref) + ".idx").read_bytes())
    if i.exists():
        pair = (b.read_bytes() if b.exists() else None, i.read_bytes())
        assert pair in (old, new), f"{i} and {b} are not one dataset (old .idx with the new .bin?)"
        if pair == old:
            return "absent"  # the old dataset, untouched
        return dataset_state(out, ref)
    if b.exists():
        assert b.read_bytes() in (old[0], new[0]), f"{b}: neither the old nor the new .bin"
    return "incomplete"


def teacher_cache_state(out: Path, ref: Path) -> str:
    """Shards written one by one (each whole), cache.json last."""
    if not out.exists():
        return "incomplete" if temp_entries(out.parent) else "absent"
    for p in out.iterdir():
        if TEMP_RE.search(p.name):
            continue
        assert (ref / p.name).exists(), f"{p}: not in the reference cache"
        if p.suffix == ".safetensors":
            load_safetensors(p)
        if p.name != "cache.json":
            same_bytes(p, ref / p.name)
    if (out / "cache.json").exists():
        got, want = (json.loads((x / "cache.json").read_text()) for x in (out, ref))
        for j in (got, want):
            j.pop("out", None)
            j.get("paths", {}).pop("out", None)
        assert got == want
        assert sorted(p.name for p in out.iterdir() if not TEMP_RE.search(p.name)) == \
            sorted(p.name for p in ref.iterdir())
        return "complete"
    return "incomplete"


def step_records(run: Path) -> list:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        out.append(strip_timing(json.loads(line)))
    return out


def run_state(out: Path, ref: Path) -> str:
    """A distill/train run directory: complete checkpoints (trainer_state.json
    present) equal the reference's of the same step; final/ is the marker."""
    if not out.exists():
        return "absent"
    if (out / "run.json").exists():
        assert json.loads((out / "run.json").read_text()) == json.loads((ref / "run.json").read_text())
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(line)  # every line whole
    ck = out / "checkpoints"
    if ck.exists():
        for p in ck.iterdir():
            if TEMP_RE.search(p.name):
                continue
            assert re.fullmatch(r"step-\d{8}", p.name), f"{p}: unexpected entry"
            assert (p / "trainer_state.json").exists(), f"{p}: a visible checkpoint without trainer_state.json"
            check_checkpoint(p, ref / "checkpoints" / p.name)
    if (out / "final").exists():
        check_checkpoint(out / "final", ref / "final")
        return "complete"
    return "incomplete"


def run_final(out: Path, ref: Path) -> None:
    assert run_state(out, ref) == "complete"
    want = sorted(p.name for p in (ref / "checkpoints").iterdir())[-2:]  # --keep-last 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == want
    assert step_records(out) == step_records(ref)
    for f in ("loss.png", "eval.png"):
        same_bytes(out / f, ref / f)
    timing = re.compile(r" in [0-9.]+ s \([0-9.]+ tokens/s\)")  # the one timing in the report
    assert timing.sub("", (out / "report.md").read_text()) == timing.sub("", (ref / "report.md").read_text())


# ----------------------------------------------------------------------------
# the commands
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    out_name: str                                    # the output under the attempts directory
    argv: Callable[[dict, Path], list]               # (inputs, output path) -> command line
    state: Callable[[Path, Path], str]               # (output, reference) -> absent|incomplete|complete; asserts
    final: Optional[Callable[[Path, Path], None]] = None  # after the last rerun (default: state == complete)
    rerun: Optional[Callable[[dict, Path], list]] = None  # on what a kill left (default: argv)
    ref_argv: Optional[Callable[[dict, Path], list]] = None  # the reference run (default: argv)
    prepare: Optional[Callable[[dict, Path], None]] = None  # sets up the output path before a fresh start


def train_args(i, out, mode, keep_last=2):
    who = ["--teacher", i["teacher"]] if mode == "distill" else []
    # 3 steps, a checkpoint after each, 2 kept: every kind of write and removal happens.
    return argv(mode, *who, "--student", i["student"], "--data", i["data"], "--out", out, "--steps", 3,
                "--seq-len", 32, "--micro-batch", 2, "--global-batch", 4, "--lr", "3e-3", "--warmup", 1,
                "--eval-tokens", 64, "--save-every", 1, "--keep-last", keep_last)


CASES = [
    Case("export_bf16", "out", lambda i, o: argv("export", i["teacher"], "--out", o, "--dtype", "bf16"),
         dir_state(check_checkpoint)),
    Case("export_fp8_sharded", "out",
         lambda i, o: argv("export", i["teacher"], "--out", o, "--dtype", "fp8", "--max-shard-size", "40KB"),
         dir_state(check_checkpoint)),
    Case("prune", "out",
         lambda i, o: argv("prune", i["teacher"], "--scores", i["scores"], "--set", "intermediate_size=64",
                           "--set", "mamba_num_heads=2", "--set", "drop_layers=2", "--out", o),
         dir_state(check_checkpoint)),
    Case("score", "scores",
         lambda i, o: argv("score", i["teacher"], "--data", i["data"], "--samples", 4, "--seq-len", 32,
                           "--batch", 2, "--out", o),
         dir_state(check_scores)),
    Case("search", "candidates.json",
         lambda i, o: argv("search", i["teacher"], "--scores", i["scores"], "--budget", "1GiB", "--top-k", 3,
                           "--rank-data", i["data"], "--rank-tokens", 256, "--rank-seq-len", 32, "--out", o),
         file_state),
    Case("data_build", "corpus", lambda i, o: argv("data", "build", "--input", i["text"], "--out", o),
         dataset_state),
    Case("data_build_overwrite", "corpus", lambda i, o: argv("data", "build", "--input", i["text"], "--out", o),
         overwritten_dataset_state, prepare=put_old_dataset),
    Case("teacher_logits", "cache",
         lambda i, o: argv("teacher-logits", i["teacher"], "--data", i["data"], "--top-k", 8, "--out", o,
                           "--seq-len", 32, "--windows", 40, "--batch", 4, "--shard-tokens", 256),
         teacher_cache_state),
    Case("distill", "run", lambda i, o: train_args(i, o, "distill"), run_state, final=run_final,
         rerun=lambda i, o: train_args(i, o, "distill") + ["--resume"],
         ref_argv=lambda i, o: train_args(i, o, "distill", keep_last=100)),
    Case("train", "run", lambda i, o: train_args(i, o, "train"), run_state, final=run_final,
         rerun=lambda i, o: train_args(i, o, "train") + ["--resume"],
         ref_argv=lambda i, o: train_args(i, o, "train", keep_last=100)),
]


# ----------------------------------------------------------------------------
# the harness
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Reference:
    out: Path
    seconds: float
    events: list  # seconds after start at which an output file or directory first appeared


def reference_run(case: Case, i: dict, root: Path) -> Reference:
    root.mkdir(parents=True)
    out = root / case.out_name
    if case.prepare:
        case.prepare(i, out)
    cmd = (case.ref_argv or case.argv)(i, out)
    before = set(walk(root))  # what prepare put there is no event
    seen: dict = {}
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    while p.poll() is None:
        now = time.monotonic() - t0
        for e in walk(root):
            if e not in before:
                seen.setdefault(e, now)
        time.sleep(0.005)
    seconds = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    assert p.returncode == 0, f"reference run failed: {' '.join(cmd)}\n{err}"
    assert case.state(out, out) == "complete"
    assert not temp_entries(root), temp_entries(root)
    return Reference(out, seconds, sorted(set(seen.values())))


def kill_plan(rng: random.Random, ref: Reference, seconds: float, startup: float) -> tuple[str, float]:
    """When to kill: ("start", d) d seconds after the start, or ("write", d) d
    seconds after the attempt's first new file or directory appeared.
    `seconds`: the run's duration as now measured (the reference, or less when
    an unkilled attempt finished sooner)."""
    u = rng.random()
    end = 1.1 * seconds
    if u < 1 / 4 or not ref.events:
        return "start", rng.uniform(0, end)
    if u < 1 / 2:
        return "start", rng.uniform(min(startup, end), end)
    # Into the writing itself, which start-up jitter would make a rare target.
    window = (ref.events[-1] - ref.events[0]) * seconds / ref.seconds + 0.02
    return "write", rng.uniform(0, window)


def run_until(cmd: list, plan: Optional[tuple[str, float]], log: Path, watch: Path) -> tuple[bool, int]:
    """Runs cmd and SIGKILLs it as `plan` says (None: lets it finish); (killed, returncode)."""
    with open(log, "wb") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        if plan is not None:
            kind, delay = plan
            if kind == "write":
                before = set(walk(watch))
                while p.poll() is None and set(walk(watch)) <= before:
                    time.sleep(0.001)
            try:
                return False, p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
        p.wait()
        return plan is not None and p.returncode == -signal.SIGKILL, p.returncode


@pytest.fixture(scope="module")
def references(inp, tmp_path_factory):
    """Each case's uninterrupted reference run, made once (the distill one
    also serves the full-disk and clean-up tests)."""
    made: dict = {}

    def get(case: Case) -> Reference:
        if case.name not in made:
            made[case.name] = reference_run(case, inp, tmp_path_factory.mktemp(f"reference_{case.name}") / "r")
        return made[case.name]
    return get


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kill_at_random(case: Case, inp, references, tmp_path):
    ref = references(case)
    seed = SEED + sum(map(ord, case.name))
    rng = random.Random(seed)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    out = attempts / case.out_name
    if case.prepare:
        case.prepare(inp, out)
    log = tmp_path / "stderr.log"
    history: list[str] = []
    states: dict = {}

    def context(what: str) -> str:
        return (f"{case.name}: {what} (MINIPUZZLE_CRASH_SEED={SEED}, case seed {seed}, reference run "
                f"{ref.seconds:.3f} s)\nhistory:\n  " + "\n  ".join(history or ["(none)"]))

    seconds = ref.seconds  # the reference ran beside the poller: later runs are often quicker
    for k in range(KILLS):
        plan = kill_plan(rng, ref, seconds, inp["startup"])
        started = out.exists() or bool(temp_entries(attempts))
        cmd = (case.rerun or case.argv)(inp, out) if started else case.argv(inp, out)
        t0 = time.monotonic()
        killed, rc = run_until(cmd, plan, log, attempts)
        took = time.monotonic() - t0
        if not killed and not started:
            seconds = min(seconds, took)
        what = f"attempt {k}: " + (f"killed {plan[1]:.3f} s after the {plan[0]} ({took:.3f} s)" if killed
                                   else f"exited {rc} after {took:.3f} s")
        if not killed and rc != 0:
            raise AssertionError(context(what) + f"\n{' '.join(cmd)}\nstderr:\n{log.read_text()[-3000:]}")
        try:
            st = case.state(out, ref.out)
        except AssertionError as e:
            raise AssertionError(context(what) + f"\noutput not consistent: {e}") from e
        history.append(f"{what} -> {st}")
        states[st] = states.get(st, 0) + 1
        if st == "complete":  # start over, so later kills land in the work again
            nt_remove(out)
            if case.prepare:
                case.prepare(inp, out)

    cmd = (case.rerun or case.argv)(inp, out) if out.exists() or temp_entries(attempts) else case.argv(inp, out)
    killed, rc = run_until(cmd, None, log, attempts)
    if rc != 0:
        raise AssertionError(context(f"final rerun exited {rc}") + f"\nstderr:\n{log.read_text()[-3000:]}")
    try:
        (case.final or (lambda o, r: _assert_complete(case, o, r)))(out, ref.out)
        left = temp_entries(attempts)
        assert not left, f"temporary files left after the rerun: {left}"
    except AssertionError as e:
        raise AssertionError(context("after the final rerun") + f"\n{e}") from e
    print(f"{case.name}: seed {seed}, reference {ref.seconds:.2f} s, {KILLS} kills: {states}")


def _assert_complete(case: Case, out: Path, ref: Path) -> None:
    assert case.state(out, ref) == "complete"


def nt_remove(out: Path) -> None:
    for p in (out, Path(str(out) + ".bin"), Path(str(out) + ".idx")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ----------------------------------------------------------------------------
# full disk
# ----------------------------------------------------------------------------

def limited(fsize: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return preexec


class Tmpfs:
    """A size-limited tmpfs mounted on `path` (root only; fails otherwise)."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN, as tools/test.sh has): {r.stderr.strip()}",
                        pytrace=False)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.path)], check=False)


def expect_clean_failure(r: subprocess.CompletedProcess, where: Path) -> None:
    err = r.stderr.decode(errors="replace")
    lines = [l for l in err.splitlines() if l.strip()]
    assert r.returncode in (1, 2), f"exit {r.returncode}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "terminate called" not in err and "Exception raised from" not in err, err
    left = temp_entries(where)
    assert not left, f"temporary files left after the failure: {left}"


def restricted_run(cmd: list, mode: str, limit: int, disk: Path) -> subprocess.CompletedProcess:
    if mode == "fsize":
        return subprocess.run(cmd, capture_output=True, env=ENV, preexec_fn=limited(limit), timeout=300)
    return subprocess.run(cmd, capture_output=True, env=ENV, timeout=300)


FULL_DISK = {
    # name: (argv builder, output name, tmpfs size, RLIMIT_FSIZE)
    "export": (lambda i, o: argv("export", i["teacher"], "--out", o, "--dtype", "bf16"), "out", 64 << 10, 64 << 10),
    "export_sharded": (lambda i, o: argv("export", i["teacher"], "--out", o, "--dtype", "fp32",
                                         "--max-shard-size", "70KB"), "out", 256 << 10, 48 << 10),
    "prune": (lambda i, o: argv("prune", i["teacher"], "--scores", i["scores"], "--set", "intermediate_size=64",
                                "--out", o), "out", 64 << 10, 64 << 10),
    "score": (lambda i, o: argv("score", i["teacher"], "--data", i["data"], "--samples", 4, "--seq-len", 32,
                                "--batch", 2, "--out", o), "scores", 16 << 10, 8 << 10),  # the PNG is ~11 KB
    "search": (lambda i, o: argv("search", i["teacher"], "--scores", i["scores"], "--budget", "1GiB",
                                 "--out", o), "candidates.json", 4 << 10, 2 << 10),
    "data_build": (lambda i, o: argv("data", "build", "--input", i["text"], "--out", o), "corpus",
                   1 << 20, 1 << 20),
}


@pytest.mark.parametrize("mode", ["fsize", "tmpfs"])
@pytest.mark.parametrize("name", sorted(FULL_DISK))
def test_full_disk(name, mode, inp, tmp_path):
    build, out_name, tmpfs_size, fsize = FULL_DISK[name]
    disk = tmp_path / "disk"
    if mode == "tmpfs":
        ctx = Tmpfs(disk, tmpfs_size)
    else:
        disk.mkdir()
        ctx = _Nothing(disk)
    with ctx:
        out = disk / out_name
        r = restricted_run(build(inp, out), mode, fsize, disk)
        expect_clean_failure(r, disk)
        assert not out.exists(), f"{out} exists after a failed write"
        assert not Path(str(out) + ".idx").exists()
        assert not any(disk.iterdir()), sorted(p.name for p in disk.iterdir())


def teacher_logits_args(i: dict, out: Path) -> list:
    return argv("teacher-logits", i["teacher"], "--data", i["data"], "--top-k", 8, "--out", out, "--seq-len", 32,
                "--windows", 40, "--batch", 4, "--shard-tokens", 256)


@pytest.mark.parametrize("mode", ["fsize", "tmpfs"])
def test_full_disk_teacher_logits_keeps_whole_shards(mode, inp, tmp_path):
    """Shards are written while the next one is computed: a write that fails
    still stops the run with one line, leaves only whole shards, and a rerun
    with room completes them to the same bytes."""
    ref = tmp_path / "ref"
    subprocess.run(teacher_logits_args(inp, ref), check=True, env=ENV, capture_output=True)
    shard = max(p.stat().st_size for p in ref.glob("shard-*.safetensors"))
    disk = tmp_path / "disk"
    # tmpfs: room for two shards of five; RLIMIT_FSIZE: for no shard.
    ctx = Tmpfs(disk, 2 * shard + 8192) if mode == "tmpfs" else _Nothing(disk)
    if mode == "fsize":
        disk.mkdir()
    with ctx:
        out = disk / "cache"
        r = restricted_run(teacher_logits_args(inp, out), mode, shard // 2, disk)
        expect_clean_failure(r, disk)
        assert teacher_cache_state(out, ref) == "incomplete"
        whole = sorted(p.name for p in out.glob("shard-*.safetensors")) if out.exists() else []
        if mode == "tmpfs":
            assert 1 <= len(whole) <= 2, whole
        moved = tmp_path / "moved"
        moved.mkdir()
        if out.exists():
            shutil.copytree(out, moved / "cache")
    subprocess.run(teacher_logits_args(inp, moved / "cache"), check=True, env=ENV, capture_output=True)
    assert teacher_cache_state(moved / "cache", ref) == "complete"


class _Nothing:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def distill_reference(references) -> Path:
    """An uninterrupted distill run with every step's checkpoint (--keep-last 100)."""
    return references(next(c for c in CASES if c.name == "distill")).out


@pytest.mark.parametrize("mode", ["fsize", "tmpfs"])
def test_full_disk_keeps_the_last_checkpoint(mode, inp, distill_reference, tmp_path):
    """A distill run stops at step 1 with a checkpoint; resumed where the next
    one cannot be written, it exits 1 with one line and step 1 intact; resumed
    with room again (fsize), it finishes equal to an uninterrupted run. (train
    is the same loop and the same checkpoint code.)"""
    ref = distill_reference
    step1 = ref / "checkpoints" / "step-00000001"
    ckpt_bytes = sum(p.stat().st_size for p in step1.iterdir())
    disk = tmp_path / "disk"
    # tmpfs: room for run.json, metrics and one checkpoint, not for a second one
    ctx = Tmpfs(disk, ckpt_bytes + ckpt_bytes // 2) if mode == "tmpfs" else _Nothing(disk)
    if mode == "fsize":
        disk.mkdir()
    with ctx:
        run = disk / "run"
        r = subprocess.run(train_args(inp, run, "distill") + ["--stop-at-step", "1"], env=ENV, capture_output=True)
        assert r.returncode == 130, r.stderr.decode()
        mine = run / "checkpoints" / "step-00000001"
        check_checkpoint(mine, step1)
        before = {p.name: p.read_bytes() for p in mine.iterdir()}
        r = restricted_run(train_args(inp, run, "distill") + ["--resume"], mode, 100 << 10, disk)
        expect_clean_failure(r, disk)
        assert {p.name: p.read_bytes() for p in mine.iterdir()} == before, "the previous checkpoint changed"
        assert run_state(run, ref) == "incomplete"
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]
        if mode == "tmpfs":
            return  # no room for the rest of the run
        r = subprocess.run(train_args(inp, run, "distill") + ["--resume"], env=ENV, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        assert run_state(run, ref) == "complete"
        assert step_records(run) == step_records(ref)
        assert not temp_entries(disk)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_resume_cleans_up_what_a_kill_left(inp, distill_reference, tmp_path):
    """Deterministic versions of states the random kills reach rarely: a run
    killed after committing a checkpoint but before removing the ones beyond
    --keep-last, half-written checkpoints (hidden partials, nested ones
    included) and temporary files of dead processes. A --resume removes them
    all, keeps the newest --keep-last checkpoints, and leaves what a live
    process writes alone."""
    run = tmp_path / "run"
    shutil.copytree(distill_reference, run)  # every step's checkpoint: as if killed before the clean-up
    dead, live = dead_pid(), os.getpid()
    ck = run / "checkpoints"
    stale = [ck / f".step-00000006.partial-{dead}", ck / f"..step-00000006.partial-{dead}.partial-{dead}",
             run / f".final.partial-{dead}", run / f"run.json.tmp.{dead}.0", run / f"report.md.tmp.{dead}.3"]
    for p in stale[:3]:
        p.mkdir()
        (p / "model.safetensors.tmp.1.0").write_bytes(b"half")
    for p in stale[3:]:
        p.write_bytes(b"half")
    alive = ck / f".step-00000009.partial-{live}"
    alive.mkdir()
    r = subprocess.run(train_args(inp, run, "distill") + ["--resume"], env=ENV, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    assert [p for p in stale if p.exists()] == []
    assert alive.exists(), "a live process's partial directory was removed"
    alive.rmdir()
    run_final(run, distill_reference)
    assert not temp_entries(run)
