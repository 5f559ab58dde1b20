"""`minipuzzle teacher-logits`: the offline teacher cache, read with the Python
safetensors package, holds the top-k of transformers' own NemotronHForCausalLM
logits / T on the windows it names; the windows are one epoch of the data in
a permutation, then on into the next; a stopped run resumes to the same
bytes; user errors exit 2 with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import nemotron_tiny as nt
from test_score_search import write_dataset

SPEC = nt.SPECS_BY_NAME["g2_state32"]
SEQ_LEN = 24
K = 8
T = 2.0
WINDOWS = 40  # the dataset holds 33 windows: 7 run into epoch 1


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_cache")
    model = nt.build_model(SPEC)
    teacher = nt.save_checkpoint(model, SPEC, root / "teacher", "hub")
    rng = np.random.default_rng(21)
    docs = [rng.integers(0, SPEC.vocab, 200) for _ in range(4)]
    data = write_dataset(root / "train", docs)
    return {"root": root, "teacher": teacher, "data": data, "model": model,
            "tokens": np.concatenate(docs).astype(np.int64)}


@pytest.fixture(scope="module")
def full(work):
    """The cache of the default command line, made once: tests that read it
    share it, tests that change a cache copy it first."""
    out = work["root"] / "full"
    r = nt.run_cli(*cache_args(work, out))
    return {"out": out, "stdout": r.stdout}


def copy_of(full, dst: Path) -> Path:
    shutil.copytree(full["out"], dst)
    return dst


def cache_args(work, out, *extra, **over):
    """The command line; keyword arguments replace an option (top_k=0 -> --top-k 0)."""
    opts = {"top_k": K, "seq_len": SEQ_LEN, "windows": WINDOWS, "seed": 5, "temperature": T, "batch": 3,
            "shard_tokens": 240}
    opts.update(over)
    args = ["teacher-logits", work["teacher"], "--data", work["data"], "--out", out]
    for k, v in opts.items():
        if v is not None:  # None leaves the option out
            args += ["--" + k.replace("_", "-"), v]
    return [*args, *extra]


def read_cache(out: Path):
    meta = json.loads((out / "cache.json").read_text())
    parts = {"window_starts": [], "values": [], "indices": [], "rest_lse": []}
    for s in meta["shards"]:
        with safe_open(str(out / s["file"]), framework="pt") as f:
            md = f.metadata()
            assert md["format"] == "minipuzzle-teacher-cache"
            assert json.loads(md["identity"]) == meta["identity"]
            assert int(md["first_window"]) == s["first_window"] and int(md["windows"]) == s["windows"]
            assert set(f.keys()) == set(parts)
            for k in parts:
                parts[k].append(f.get_tensor(k))
    return meta, {k: torch.cat(v) for k, v in parts.items()}


def test_cache_holds_transformers_topk(work, full, tmp_path):
    out = full["out"]
    assert "40 windows" in full["stdout"], full["stdout"]
    meta, t = read_cache(out)
    ident = meta["identity"]
    assert (ident["k"], ident["seq_len"], ident["temperature"], ident["windows"]) == (K, SEQ_LEN, T, WINDOWS)
    assert ident["windows_per_shard"] == 10 and len(meta["shards"]) == 4
    assert ident["data"]["total_tokens"] == len(work["tokens"])
    assert meta["order"]["epoch_windows"] == 33
    assert t["window_starts"].dtype == torch.int64 and t["window_starts"].shape == (WINDOWS,)
    assert t["values"].dtype == torch.float32 and t["values"].shape == (WINDOWS, SEQ_LEN, K)
    assert t["indices"].dtype == torch.int32 and t["indices"].shape == (WINDOWS, SEQ_LEN, K)
    assert t["rest_lse"].dtype == torch.float32 and t["rest_lse"].shape == (WINDOWS, SEQ_LEN)
    # Size: k*(4+4)+4 bytes per token plus 8 per window, plus headers.
    payload = WINDOWS * SEQ_LEN * (K * 8 + 4) + WINDOWS * 8
    size = sum((out / s["file"]).stat().st_size for s in meta["shards"])
    assert payload <= size <= payload + 4 * 2048

    # Epoch 0 is a permutation of every window; epoch 1 starts another one.
    starts = t["window_starts"].numpy()
    assert sorted(starts[:33].tolist()) == [i * SEQ_LEN for i in range(33)]
    assert len(set(starts[33:].tolist())) == WINDOWS - 33 and np.all(starts % SEQ_LEN == 0)
    assert starts[:33].tolist() != [i * SEQ_LEN for i in range(33)]  # shuffled

    ids = torch.from_numpy(np.stack([work["tokens"][s:s + SEQ_LEN] for s in starts]))
    logits = nt.hf_logits(work["model"], ids) / T
    ref_v, ref_i = torch.topk(logits, K, dim=-1)
    torch.testing.assert_close(t["values"], ref_v, rtol=0, atol=1e-4)
    assert torch.equal(t["indices"].long(), ref_i)
    rest = logits.scatter(-1, ref_i, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(t["rest_lse"], rest, rtol=0, atol=1e-4)

    # A rerun on the complete cache does nothing.
    r = nt.run_cli(*cache_args(work, out))
    assert "nothing to do" in r.stdout, r.stdout


def test_stopped_run_resumes_to_the_same_bytes(work, full, tmp_path):
    full, part = full["out"], tmp_path / "part"
    r = nt.run_cli(*cache_args(work, part, "--stop-after-shards", 2), check=False)
    assert r.returncode == 130, r.stderr
    assert not (part / "cache.json").exists()
    assert sorted(p.name for p in part.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    # The same command resumes. (Another --batch would also resume, but its
    # shards may differ from these in the last float bit: matmul blocking.)
    r = nt.run_cli(*cache_args(work, part))
    assert "2 reused" in r.stdout, r.stdout
    assert sorted(p.name for p in part.iterdir()) == sorted(p.name for p in full.iterdir())
    for f in full.iterdir():
        assert f.read_bytes() == (part / f.name).read_bytes(), f.name


def expect_user_error(args, needle):
    r = nt.run_cli(*args, check=False)
    assert r.returncode == 2, f"{args}: rc {r.returncode}: {r.stderr}"
    lines = r.stderr.strip("\n").split("\n")
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]


def test_user_errors(work, full, tmp_path):
    out = tmp_path / "e"
    expect_user_error(["teacher-logits", work["teacher"], "--data", work["data"], "--out", out], "top-k")
    expect_user_error(cache_args(work, out, top_k=0), "--top-k")
    expect_user_error(cache_args(work, out, top_k=SPEC.vocab + 1), "--top-k")
    expect_user_error(cache_args(work, out, "--tokens", 100), "--tokens")
    expect_user_error(cache_args(work, out, temperature=0), "--temperature")
    expect_user_error(cache_args(work, out, "--dtype", "fp13"), "fp13")
    expect_user_error(cache_args(work, out, seq_len=5000), "--seq-len")
    expect_user_error(["teacher-logits", tmp_path / "nope", "--data", work["data"], "--top-k", 4, "--out", out],
                      "nope")
    expect_user_error(["teacher-logits", work["teacher"], "--data", tmp_path / "nodata", "--top-k", 4, "--out", out],
                      "nodata")
    assert not (out / "cache.json").exists()
    # Numbers that would wrap or overflow: refused before anything is written.
    expect_user_error(cache_args(work, out, windows=-1), "--windows")
    expect_user_error(cache_args(work, out, windows=2**62), "--windows")
    expect_user_error(cache_args(work, out, "--tokens", -1, windows=None), "--tokens")
    # Bad input found after --out was made leaves no empty directory.
    bad = write_dataset(tmp_path / "bad", [np.full(300, SPEC.vocab + 3)])
    fresh = tmp_path / "fresh"
    expect_user_error(["teacher-logits", work["teacher"], "--data", bad, "--top-k", 4, "--seq-len", SEQ_LEN,
                       "--windows", 2, "--out", fresh], "vocab")
    assert not fresh.exists()
    if not torch.cuda.is_available():
        expect_user_error(cache_args(work, fresh, "--device", "cuda"), "cuda")
        assert not fresh.exists()
    # A cache (complete or not) made with other settings is not overwritten.
    done = copy_of(full, tmp_path / "done")
    expect_user_error(cache_args(work, done, top_k=K + 1), "other settings")
    partial = tmp_path / "partial"
    nt.run_cli(*cache_args(work, partial, "--stop-after-shards", 1), check=False)
    expect_user_error(cache_args(work, partial, seed=6), "other settings")
    # A damaged shard in a complete cache.
    shard = done / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    expect_user_error(cache_args(work, done), "shard-00001")


def test_distill_reads_the_cache_and_checks_its_teacher(work, full, tmp_path):
    cache = full["out"]
    student = tmp_path / "student"
    nt.run_cli("prune", work["teacher"], "--set", "drop_layers=1", "--out", student)

    def distill(out, *extra):
        return ["distill", "--teacher-cache", cache, "--student", student, "--data", work["data"], "--out", out,
                "--seq-len", SEQ_LEN, "--seed", 5, "--temperature", T, "--micro-batch", 2, "--global-batch", 4,
                "--steps", 3, "--eval-tokens", 48, *extra]

    nt.run_cli(*distill(tmp_path / "run"))
    assert (tmp_path / "run" / "final" / "config.json").exists()
    # With --teacher too (it runs the evaluations), that teacher must be the cache's.
    nt.run_cli(*distill(tmp_path / "both", "--teacher", work["teacher"]))
    expect_user_error(distill(tmp_path / "other", "--teacher", student), "another teacher")
    assert not (tmp_path / "other").exists()


def streaming_cap(work, tmp_path) -> str:
    """A --max-device-memory under which the teacher streams, found with
    --dry-run. A cap below one block is refused naming the smallest cap
    that streams (rounded to 0.1 of its unit): that, rounded up, is the
    first guess; else bisection (on a log scale) between a refused cap and a
    resident one (a tiny teacher's logits outweigh its weights, so the window
    between resident and too small is narrow)."""
    def plan(cap):
        r = nt.run_cli(*cache_args(work, tmp_path / "dry", "--dry-run", "--max-device-memory", int(cap)), check=False)
        if r.returncode != 0:
            assert "too small to stream" in r.stderr, r.stderr
            return "refused", r.stderr
        assert r.stdout.startswith("weights "), r.stdout
        return ("streamed" if r.stdout.startswith("weights streamed") else "resident"), r.stdout

    lo, hi = 1024, 64 << 20
    kind, said = plan(lo)
    assert kind == "refused", said
    number, unit = said.split("need at least ")[1].split()[:2]
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit.rstrip(" (),")]
    guess = (float(number) + 0.06) * scale
    for _ in range(20):
        kind, said = plan(guess)
        if kind == "streamed":
            return str(int(guess))
        lo, hi = (guess, hi) if kind == "refused" else (lo, guess)
        guess = (lo * hi) ** 0.5
    raise AssertionError(f"no cap streams this teacher; the last plan said: {said}")


def test_streamed_teacher_writes_the_resident_bytes(work, full, tmp_path):
    # The weights held a block at a time, layer-major over the batches of a
    # shard: the cache must be the resident run's, byte for byte.
    cap = streaming_cap(work, tmp_path)
    r = nt.run_cli(*cache_args(work, tmp_path / "streamed", "--max-device-memory", cap))
    assert r.stdout.splitlines()[0].startswith("weights streamed"), r.stdout
    assert full["stdout"].splitlines()[0].startswith("weights resident"), full["stdout"]
    names = sorted(p.name for p in full["out"].iterdir())
    assert names == sorted(p.name for p in (tmp_path / "streamed").iterdir())
    for n in names:
        assert (full["out"] / n).read_bytes() == (tmp_path / "streamed" / n).read_bytes(), n


def test_a_cap_below_one_block_is_refused(work, tmp_path):
    r = nt.run_cli(*cache_args(work, tmp_path / "c", "--max-device-memory", "1KiB"), check=False)
    assert r.returncode == 2, r.stderr
    assert "too small to stream this model" in r.stderr and "need at least" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "c").exists()
