"""`minipuzzle score` and `minipuzzle search` end to end on a tiny HF-made checkpoint:
the files score writes (read with the Python safetensors package, names and
shapes as README documents them), determinism, search from those scores with
and without ranking on data, and every user error: exit 2, one line, nothing
left under --out."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import nemotron_tiny as nt

SPEC = nt.SPECS_BY_NAME["g2_state32"]  # M-*M-M: all three layer types, n_groups 2
OTHER = nt.SPECS_BY_NAME["m_a_f_g1"]


def write_dataset(prefix: Path, docs: list[np.ndarray]) -> Path:
    """Megatron MMIDIDX v1 with uint16 tokens, written here with numpy only."""
    sizes = np.array([len(d) for d in docs], dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64) * 2)]).astype("<i8")
    doc_idx = np.arange(len(docs) + 1, dtype="<i8")
    Path(str(prefix) + ".bin").write_bytes(b"".join(d.astype("<u2").tobytes() for d in docs))
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)
    idx += struct.pack("<QQ", len(docs), len(doc_idx)) + sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes()
    Path(str(prefix) + ".idx").write_bytes(idx)
    return prefix


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    ckpt = nt.save_checkpoint(nt.build_model(SPEC), SPEC, root / "parent", "hub")
    other = nt.save_checkpoint(nt.build_model(OTHER), OTHER, root / "other", "hub")
    rng = np.random.default_rng(5)
    data = write_dataset(root / "calib", [rng.integers(0, SPEC.vocab, 700) for _ in range(8)])
    scores = root / "scores"
    nt.run_cli("score", ckpt, "--data", data, "--samples", 8, "--seq-len", 32, "--batch", 3, "--out", scores)
    return {"root": root, "ckpt": ckpt, "other": other, "data": data, "scores": scores}


def expect_user_error(args, out: Path, must_contain=()):
    r = nt.run_cli(*args, check=False)
    assert r.returncode == 2, f"rc {r.returncode}: {r.stderr}"
    lines = r.stderr.strip("\n").split("\n")
    assert len(lines) == 1, r.stderr
    for s in must_contain:
        assert s in lines[0], lines[0]
    assert not out.exists(), f"{out} written on error"
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith("." + out.name)]
    assert not leftovers, leftovers
    return lines[0]


def test_score_writes_documented_tensors(work):
    path = work["scores"] / "importance.safetensors"
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in names}
    want = {"layer.mse", "layer.kl", "layer.loss", "layer.bi", "hidden"}
    for i, c in enumerate(SPEC.pattern):
        if c == "-":
            want.add(f"layers.{i}.ffn")
        elif c == "*":
            want.add(f"layers.{i}.attention_heads")
        else:
            want |= {f"layers.{i}.mamba_channels", f"layers.{i}.mamba_heads", f"layers.{i}.mamba_head_channels"}
    assert names == want
    assert meta["format"] == "minipuzzle-importance"
    n = len(SPEC.pattern)
    for m in ("mse", "kl", "loss", "bi"):
        assert t[f"layer.{m}"].shape == (n,) and t[f"layer.{m}"].dtype == torch.float32
    assert t["hidden"].shape == (SPEC.hidden,)
    for i, c in enumerate(SPEC.pattern):
        if c == "-":
            assert t[f"layers.{i}.ffn"].shape == (SPEC.ffn,)
            assert (t[f"layers.{i}.ffn"] >= 0).all()
        elif c == "*":
            assert t[f"layers.{i}.attention_heads"].shape == (SPEC.attn_heads,)
        else:
            ch = t[f"layers.{i}.mamba_channels"]
            assert ch.shape == (SPEC.mamba_heads * SPEC.mamba_head_dim,)
            per_head = ch.reshape(SPEC.mamba_heads, SPEC.mamba_head_dim)
            torch.testing.assert_close(t[f"layers.{i}.mamba_heads"], per_head.norm(dim=1), rtol=1e-5, atol=0)
            torch.testing.assert_close(t[f"layers.{i}.mamba_head_channels"], per_head.norm(dim=0), rtol=1e-5, atol=0)
    assert (t["layer.mse"] > 0).all() and (t["layer.kl"] >= 0).all()

    j = json.loads((work["scores"] / "importance.json").read_text())
    assert j["format"] == "minipuzzle-importance" and j["primary_layer_metric"] == "mse"
    assert j["config_hash"] == meta["config_hash"] and j["weights_hash"] == meta["weights_hash"]
    assert j["measured"]["samples"] == 8 and j["measured"]["seq_len"] == 32
    assert j["measured"]["aggregation"] == "seq=mean,batch=l2"
    rows = j["layers"]
    assert [r["type"] for r in rows] == list(SPEC.pattern)
    assert sorted(r["rank_mse"] for r in rows) == list(range(1, n + 1))
    best = max(rows, key=lambda r: r["mse"])
    assert best["rank_mse"] == 1 and best["rank_in_type_mse"] == 1

    report = (work["scores"] / "report.md").read_text()
    assert "layer_importance.png" in report and "| layer | type |" in report
    png = (work["scores"] / "layer_importance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    log = (work["scores"] / "score.log.jsonl").read_text().strip().split("\n")
    assert len(log) == 3 and json.loads(log[-1])["tokens"] == 8 * 32


def test_score_is_deterministic(work, tmp_path):
    again = tmp_path / "again"
    nt.run_cli("score", work["ckpt"], "--data", work["data"], "--samples", 8, "--seq-len", 32, "--batch", 3,
               "--out", again)
    a = (work["scores"] / "importance.safetensors").read_bytes()
    assert (again / "importance.safetensors").read_bytes() == a


def test_search_from_scores_and_rank_on_data(work, tmp_path):
    out = tmp_path / "candidates.json"
    r = nt.run_cli("search", work["ckpt"], "--scores", work["scores"], "--budget", "50MiB", "--space", "full",
                   "--precision", "bf16", "--context", 64, "--max-depth-reduction", 0.5, "--max-width-reduction",
                   0.5, "--top-k", 4, "--out", out)
    j = json.loads(out.read_text())
    cands = j["candidates"]
    assert 1 <= len(cands) <= 4
    assert all(c["memory"]["total_bytes"] <= j["budget_bytes"] for c in cands)
    proxies = [c["proxy_score"] for c in cands]
    assert proxies == sorted(proxies, reverse=True)

    ranked = tmp_path / "ranked.json"
    nt.run_cli("search", work["ckpt"], "--scores", work["scores"], "--budget", "50MiB", "--space", "full",
               "--precision", "bf16", "--context", 64, "--max-depth-reduction", 0.5, "--max-width-reduction", 0.5,
               "--top-k", 4, "--out", ranked, "--rank-data", work["data"], "--rank-tokens", 256,
               "--rank-seq-len", 64)
    rc = json.loads(ranked.read_text())["candidates"]
    assert len(rc) == len(cands)
    agreement = [c["measured"]["agreement"] for c in rc]
    assert agreement == sorted(agreement, reverse=True)
    for c in rc:
        m = c["measured"]
        assert m["tokens"] == 256 and 0 <= m["accuracy"] <= 1 and m["kl"] >= 0
    assert sorted(c["measured"]["proxy_rank"] for c in rc) == list(range(1, len(rc) + 1))
    # Fewer --rank-tokens than one window: refused, not silently every window.
    short = tmp_path / "short.json"
    r = nt.run_cli("search", work["ckpt"], "--scores", work["scores"], "--budget", "50MiB", "--space", "full",
                   "--precision", "bf16", "--context", 64, "--top-k", 4, "--out", short, "--rank-data", work["data"],
                   "--rank-tokens", 32, "--rank-seq-len", 64, check=False)
    assert r.returncode == 2 and "--rank-tokens" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not short.exists()
    # The top candidate prunes to a checkpoint that transformers loads.
    pruned = tmp_path / "pruned"
    nt.run_cli("prune", work["ckpt"], "--scores", work["scores"], "--candidate", f"{ranked}#1", "--out", pruned)
    model = nt.load_hf(pruned)
    ids = nt.random_tokens(SPEC.vocab, 1, 16, seed=9)
    ours = nt.cli_logits(pruned, ids, tmp_path / "lg")
    torch.testing.assert_close(ours, nt.hf_logits(model, ids), rtol=0, atol=1e-4)


def test_score_dataset_shorter_than_samples_times_seq_len(work, tmp_path):
    expect_user_error(["score", work["ckpt"], "--data", work["data"], "--samples", 1000, "--seq-len", 64,
                       "--out", tmp_path / "s"], tmp_path / "s", must_contain=["--samples"])


def test_score_token_ids_outside_vocab(work, tmp_path):
    bad = write_dataset(tmp_path / "big", [np.full(2000, SPEC.vocab + 7)])
    expect_user_error(["score", work["ckpt"], "--data", bad, "--samples", 4, "--seq-len", 32,
                       "--out", tmp_path / "s"], tmp_path / "s", must_contain=[str(SPEC.vocab)])


@pytest.mark.parametrize("flag,value", [("--aggregation", "seq=median"), ("--layer-metrics", "mse,ppl"),
                                        ("--samples", "0"), ("--batch", "-1")])
def test_score_bad_options(work, tmp_path, flag, value):
    expect_user_error(["score", work["ckpt"], "--data", work["data"], "--samples", 4, "--seq-len", 32, flag, value,
                       "--out", tmp_path / "s"], tmp_path / "s")


def test_score_out_not_empty(work, tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("keep me")
    r = nt.run_cli("score", work["ckpt"], "--data", work["data"], "--samples", 4, "--seq-len", 32, "--out", out,
                   check=False)
    assert r.returncode == 2 and len(r.stderr.strip().split("\n")) == 1
    assert (out / "x").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["x"]


def test_scores_of_another_model_are_rejected(work, tmp_path):
    expect_user_error(["search", work["other"], "--scores", work["scores"], "--budget", "1GiB",
                       "--out", tmp_path / "c.json"], tmp_path / "c.json", must_contain=["another model"])
    expect_user_error(["prune", work["other"], "--scores", work["scores"], "--set", "intermediate_size=32",
                       "--out", tmp_path / "p"], tmp_path / "p", must_contain=["another model"])


def test_scores_of_other_weights_are_rejected(work, tmp_path):
    # Same architecture, other weights: the weights hash tells them apart.
    model = nt.build_model(SPEC)
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    twin = nt.save_checkpoint(model, SPEC, tmp_path / "twin", "hub")
    expect_user_error(["search", twin, "--scores", work["scores"], "--budget", "1GiB", "--out",
                       tmp_path / "c.json"], tmp_path / "c.json", must_contain=["other weights"])


def test_corrupt_scores_are_rejected(work, tmp_path):
    bad = tmp_path / "bad_scores"
    bad.mkdir()
    for f in ("importance.json", "importance.safetensors"):
        (bad / f).write_bytes((work["scores"] / f).read_bytes())
    raw = bytearray((bad / "importance.safetensors").read_bytes())
    (bad / "importance.safetensors").write_bytes(bytes(raw[: len(raw) - 4]))  # truncated
    expect_user_error(["search", work["ckpt"], "--scores", bad, "--budget", "1GiB", "--out", tmp_path / "c.json"],
                      tmp_path / "c.json")


def test_search_infeasible_budget_names_the_smallest_memory(work, tmp_path):
    msg = expect_user_error(["search", work["ckpt"], "--scores", work["scores"], "--budget", "1KiB",
                             "--out", tmp_path / "c.json"], tmp_path / "c.json", must_contain=["smallest"])
    import re
    m = re.search(r"smallest memory reachable in the allowed space is ([0-9.]+) (B|KiB|MiB|GiB)", msg)
    assert m and float(m.group(1)) > 0, msg


@pytest.mark.parametrize("extra,needle", [
    (["--axis", "ffn=7:64:8"], "ffn"),
    (["--axis", "warp=1:2"], "warp"),
    (["--space", "galaxy"], "--space"),
    (["--uniform-scores"], "exactly one"),
    (["--rank-by", "vibes", "--rank-data", "DATA"], "--rank-by"),
    (["--rank-data", "NOWHERE"], "nowhere"),
    (["--rank-data", "DATA", "--rank-tokens", 10, "--rank-seq-len", 32], "--rank-tokens"),
    (["--rank-tokens", 4096], "needs --rank-data"),
    (["--device", "cuda:0"], "needs --rank-data"),
    (["--max-device-memory", "1GiB"], "needs --rank-data"),
    (["--dry-run"], "needs --rank-data"),
    (["--rank-data", "DATA", "--max-device-memory", "1KiB"], "too small"),
    (["--rank-data", "DATA", "--dtype", "fp13"], "fp13"),
])
def test_search_bad_options(work, tmp_path, extra, needle):
    subst = {"DATA": str(work["data"]), "NOWHERE": str(tmp_path / "nowhere")}
    extra = [subst.get(e, e) if isinstance(e, str) else e for e in extra]
    expect_user_error(["search", work["ckpt"], "--scores", work["scores"], "--budget", "1GiB",
                       "--out", tmp_path / "c.json", *extra], tmp_path / "c.json", must_contain=[needle])


def test_search_checks_its_inputs_before_searching(work, tmp_path):
    # Found after the search, these errors came after a results table on stdout.
    for out, extra in ((tmp_path / "nodir" / "c.json", []),
                       (tmp_path / "c.json", ["--rank-data", tmp_path / "nowhere"])):
        r = nt.run_cli("search", work["ckpt"], "--scores", work["scores"], "--budget", "1GiB", "--out", out, *extra,
                       check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stdout == "", r.stdout
