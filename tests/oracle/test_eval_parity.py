"""`minipuzzle data build` + `minipuzzle eval --json` vs the same computation in HF.

Windows (the eval contract): flat token stream = all sequences concatenated in
order; window k covers flat tokens [k*N, k*N + N + 1): inputs the first N,
targets the next N; #windows = min(max_tokens // N if given, (T - 1) // N).
Loss = mean next-token cross-entropy (nats) over all predicted tokens,
accuracy = top-1 next-token accuracy. Compared: tokens exactly, loss within
1e-4 relative, perplexity = exp(loss) within 1e-4 relative, accuracy within
one token.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nemotron_tiny as nt

TEXTS = {
    "a.txt": "The quick brown fox jumps over the lazy dog. " * 4,
    "b.txt": "Nemotron-H mixes Mamba2, attention and MLP layers;\nhybrid models save KV cache.\n" * 2,
    "c.txt": "0123456789 ~!@#$%^&*()_+ {}[]|\\:;\"'<>,.?/ \t tabs and unicode: \u00e9\u00e8\u00ea \u4e2d\u6587 \u2603\n",
    "d.txt": "x" * 37,
}


def _expected_doc(text: str) -> list[int]:
    return [1] + [b + 3 for b in text.encode("utf-8")] + [2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for name, text in TEXTS.items():
        p = root / name
        p.write_bytes(text.encode("utf-8"))
        files.append(p)
    return root, files


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    _, files = corpus
    prefix = tmp_path_factory.mktemp("data") / "tiny"
    nt.run_cli("data", "build", "--input", *files, "--out", prefix)
    return prefix


@pytest.fixture(scope="module")
def models():
    return {s.name: nt.build_model(s) for s in nt.SPECS}


@pytest.fixture(scope="module")
def ckpt(models, tmp_path_factory):
    return nt.checkpoint_cache(models, tmp_path_factory.mktemp("ckpt"))


def test_data_build_tokens(dataset):
    """Byte-level tokens: one document per file, bos=1, bytes+3, eos=2, uint16."""
    seqs = nt.read_indexed_dataset(dataset)
    idx = (dataset.parent / (dataset.name + ".idx")).read_bytes()
    assert idx[17] == 8, f"dtype code {idx[17]} (expected 8 = uint16)"
    got = sorted(s.tolist() for s in seqs)
    want = sorted(_expected_doc(t) for t in TEXTS.values())
    assert got == want


def test_data_build_keeps_file_order(dataset):
    """Files named on the command line become documents in that order."""
    seqs = nt.read_indexed_dataset(dataset)
    assert [s.tolist() for s in seqs] == [_expected_doc(t) for t in TEXTS.values()]


def test_data_build_from_directory(corpus, tmp_path):
    root, _ = corpus
    prefix = tmp_path / "fromdir"
    nt.run_cli("data", "build", "--input", root, "--out", prefix)
    seqs = nt.read_indexed_dataset(prefix)
    assert sorted(s.tolist() for s in seqs) == sorted(_expected_doc(t) for t in TEXTS.values())


@torch.no_grad()
def hf_eval(model, prefix, seq_len, max_tokens=None, batch=4):
    flat = np.concatenate(nt.read_indexed_dataset(prefix))
    n_windows = (len(flat) - 1) // seq_len
    if max_tokens is not None:
        n_windows = min(n_windows, max_tokens // seq_len)
    assert n_windows > 0
    windows = np.stack([flat[k * seq_len: k * seq_len + seq_len + 1] for k in range(n_windows)])
    windows = torch.from_numpy(windows).long()
    nll_sum, correct, count = 0.0, 0, 0
    for s in range(0, n_windows, batch):
        w = windows[s:s + batch]
        logits = nt.hf_logits(model, w[:, :-1]).double()
        tgt = w[:, 1:]
        nll_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum").item()
        correct += (logits.argmax(-1) == tgt).sum().item()
        count += tgt.numel()
    return {"loss": nll_sum / count, "accuracy": correct / count, "tokens": count}


def cli_eval(ckpt_dir, prefix, seq_len, batch, max_tokens=None):
    args = ["eval", ckpt_dir, "--data", prefix, "--seq-len", seq_len, "--batch", batch, "--json"]
    if max_tokens is not None:
        args += ["--max-tokens", max_tokens]
    r = nt.run_cli(*args)
    out = r.stdout.strip()
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"eval --json stdout is not one JSON object:\n{out[-2000:]}")


EVAL_CASES = [
    # (spec, seq_len, batch, max_tokens)
    ("m_a_f_g1", 20, 3, None),       # chunk 8; 20 = 2 chunks + 4
    ("g2_state32", 37, 2, None),     # chunk 16; batch does not divide #windows
    ("g2_state32", 16, 4, 100),      # max_tokens not a multiple of N
    ("g4_gqa", 45, 1, None),
    ("mamba_mlp_g3", 30, 5, 150),
]


@pytest.mark.parametrize("name,seq_len,batch,max_tokens", EVAL_CASES,
                         ids=[f"{c[0]}-N{c[1]}-B{c[2]}-max{c[3]}" for c in EVAL_CASES])
def test_eval_matches_hf(models, ckpt, dataset, name, seq_len, batch, max_tokens):
    ref = hf_eval(models[name], dataset, seq_len, max_tokens)
    ours = cli_eval(ckpt(name), dataset, seq_len, batch, max_tokens)
    for key in ("loss", "perplexity", "accuracy", "tokens"):
        assert key in ours, f"eval --json lacks {key!r}: {ours}"
    assert ours["tokens"] == ref["tokens"], (ours, ref)
    assert math.isclose(ours["loss"], ref["loss"], rel_tol=1e-4), (ours, ref)
    assert math.isclose(ours["perplexity"], math.exp(ref["loss"]), rel_tol=1e-4), (ours, ref)
    assert abs(ours["accuracy"] - ref["accuracy"]) * ref["tokens"] <= 1.0 + 1e-9, (ours, ref)


def test_eval_loss_is_not_trivial(models, dataset):
    """Fixture sanity: the random models' loss differs between models, so the
    comparison above would catch a wrong model."""
    a = hf_eval(models["m_a_f_g1"], dataset, 20)["loss"]
    b = hf_eval(models["g2_state32"], dataset, 20)["loss"]
    assert abs(a - b) > 1e-2
