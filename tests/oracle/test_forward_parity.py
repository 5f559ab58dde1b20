"""Forward parity: `minipuzzle logits` vs HF transformers NemotronHForCausalLM.

fp32 on CPU: max |ours - HF| < 1e-4 on every logit.

bf16 (`--dtype bf16`) vs HF fp32. Tolerance, stated: with e = ours_bf16 - HF_fp32
and h = HF_bf16 - HF_fp32 (HF run in bf16 on the same weights, i.e. what the
reference implementation itself loses to bf16):
    ||e||_F / ||HF_fp32||_F <= max(0.05, 2 * ||h||_F / ||HF_fp32||_F)
    max|e|                  <= max(0.5,  2 * max|h|)
(On these tiny models HF's own bf16 error is 1.5-3 % relative, <= 0.45 abs,
logits have std ~1.) An implementation that keeps the SSM scan / norms in
fp32 is well inside; a wrong formula is far outside (errors ~ 100 %).
"""

from __future__ import annotations

import pytest
import torch

import nemotron_tiny as nt

# (spec, batch, seq_len); lengths relative to chunk_size noted
CASES = [
    ("m_a_f_g1", 2, 27),      # chunk 8: 3 chunks + 3
    ("g2_state32", 3, 37),    # chunk 16: 2 chunks + 5, batch 3
    ("g2_state32", 1, 32),    # exactly 2 chunks
    ("g4_gqa", 1, 45),        # chunk 32: 1 chunk + 13
    ("g4_gqa", 2, 20),        # shorter than one chunk
    ("mamba_mlp_g3", 2, 17),  # chunk 4: 4 chunks + 1
    ("mamba_mlp_g3", 1, 1),   # a single token
]
CASE_IDS = [f"{s}-b{b}-L{l}" for s, b, l in CASES]

FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def models():
    return {s.name: nt.build_model(s) for s in nt.SPECS}


@pytest.fixture(scope="module")
def ckpts(models, tmp_path_factory):
    """ckpts[(spec_name, style)] -> checkpoint directory (made on first use)."""
    return nt.checkpoint_cache(models, tmp_path_factory.mktemp("ckpt"))


def _ids(name, batch, length, seed=0):
    spec = nt.SPECS_BY_NAME[name]
    return nt.random_tokens(spec.vocab, batch, length, seed=1000 * spec.seed + 7 * batch + length + seed)


def _report(ours, ref):
    d = (ours - ref).abs()
    idx = torch.nonzero(d == d.max())[0].tolist()
    return f"max abs diff {d.max().item():.3e} at [b,t,v]={idx}; mean {d.mean().item():.3e}"


def _first_bad_position(ours, ref, tol):
    d = (ours - ref).abs().amax(dim=(0, 2))
    bad = torch.nonzero(d > tol)
    return None if bad.numel() == 0 else int(bad[0])


# ----------------------------------------------------------------------------
# fixture validation (HF only): the oracle's checkpoints are what we think
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("style", nt.STYLES)
@pytest.mark.parametrize("name", [s.name for s in nt.SPECS])
def test_fixture_hf_loads_style(models, ckpts, name, style):
    """HF from_pretrained on each checkpoint style gives the in-memory model back."""
    m = models[name]
    d = ckpts(name, style)
    m2 = nt.load_hf(d)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sorted(sd) == sorted(sd2)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    ids = _ids(name, 2, 19)
    assert torch.equal(nt.hf_logits(m, ids), nt.hf_logits(m2, ids))


def test_fixture_params_are_randomized(models):
    """No parameter is left at an HF init constant (1, 0, log(1..H))."""
    for name, m in models.items():
        for pname, p in m.named_parameters():
            assert p.std().item() > 1e-3, f"{name}: {pname} looks constant"
            if pname.endswith("A_log"):
                H = p.numel()
                assert not torch.allclose(p, torch.log(torch.arange(1, H + 1, dtype=p.dtype)))


def test_fixture_exercises_dt_clamp(models):
    """The dt lower clamp (config.time_step_min) changes the logits of g2_state32,
    so an implementation that ignores it fails parity."""
    m = models["g2_state32"]
    ids = _ids("g2_state32", 2, 33)
    ref = nt.hf_logits(m, ids)
    saved = []
    for layer in m.model.layers:
        if layer.block_type == "linear_attention":
            saved.append((layer.mixer, layer.mixer.time_step_limit))
            layer.mixer.time_step_limit = (0.0, float("inf"))
    try:
        unclamped = nt.hf_logits(m, ids)
    finally:
        for mixer, lim in saved:
            mixer.time_step_limit = lim
    assert (unclamped - ref).abs().max().item() > 1e-2


# ----------------------------------------------------------------------------
# our binary vs HF
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,batch,length", CASES, ids=CASE_IDS)
def test_fp32_parity_hub_style(models, ckpts, tmp_path, name, batch, length):
    ids = _ids(name, batch, length)
    ref = nt.hf_logits(models[name], ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert torch.isfinite(ours).all()
    err = (ours - ref).abs().max().item()
    pattern = nt.SPECS_BY_NAME[name].pattern
    assert err < FP32_TOL, (
        f"{name} (pattern {pattern}) b={batch} L={length}: {_report(ours, ref)}; "
        f"first position over tol: {_first_bad_position(ours, ref, FP32_TOL)}")


@pytest.mark.parametrize("style", ["tf5", "tf5_sharded", "model_prefix"])
@pytest.mark.parametrize("name", [s.name for s in nt.SPECS])
def test_fp32_parity_other_styles(models, ckpts, tmp_path, name, style):
    ids = _ids(name, 2, 23)
    ref = nt.hf_logits(models[name], ids)
    ours = nt.cli_logits(ckpts(name, style), ids, tmp_path)
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err < FP32_TOL, f"{name} style {style}: {_report(ours, ref)}"


def test_batch_rows_independent(models, ckpts, tmp_path):
    """Row b of a batched call equals a call on that row alone (no cross-batch leaks)."""
    name = "m_a_f_g1"
    ids = _ids(name, 3, 21)
    both = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path, tag="all")
    one = nt.cli_logits(ckpts(name, "hub"), ids[1:2], tmp_path, tag="row1")
    assert (both[1:2] - one).abs().max().item() < 1e-5


def _check_bf16(name, ours, ref, hf_bf16):
    e = ours - ref
    h = hf_bf16 - ref
    rel = (e.norm() / ref.norm()).item()
    rel_hf = (h.norm() / ref.norm()).item()
    mx, mx_hf = e.abs().max().item(), h.abs().max().item()
    msg = (f"{name}: bf16 rel-Frobenius err {rel:.4f} (HF bf16: {rel_hf:.4f}), "
           f"max abs {mx:.4f} (HF bf16: {mx_hf:.4f})")
    assert torch.isfinite(ours).all(), msg
    assert rel <= max(0.05, 2 * rel_hf), msg
    assert mx <= max(0.5, 2 * mx_hf), msg


@pytest.mark.parametrize("name,batch,length", [CASES[0], CASES[1], CASES[3], CASES[5]],
                         ids=[CASE_IDS[0], CASE_IDS[1], CASE_IDS[3], CASE_IDS[5]])
def test_bf16_close_to_hf_fp32(models, ckpts, tmp_path, name, batch, length):
    ids = _ids(name, batch, length)
    m = models[name]
    ref = nt.hf_logits(m, ids)
    hf_bf16 = nt.hf_logits(nt.build_model(nt.SPECS_BY_NAME[name]).to(torch.bfloat16), ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path, dtype="bf16")
    assert ours.shape == ref.shape
    _check_bf16(name, ours, ref, hf_bf16)


# ----------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------

cuda = pytest.mark.needs_gpu  # skipped without a CUDA device (tests/conftest.py)


@cuda
@pytest.mark.parametrize("name,batch,length", CASES, ids=CASE_IDS)
def test_cuda_fp32_parity(models, ckpts, tmp_path, name, batch, length):
    ids = _ids(name, batch, length)
    ref = nt.hf_logits(models[name], ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path, device="cuda")
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err < FP32_TOL, f"cuda fp32 {name} b={batch} L={length}: {_report(ours, ref)}"


@cuda
@pytest.mark.parametrize("name,batch,length", CASES, ids=CASE_IDS)
def test_cuda_bf16_close_to_hf_fp32(models, ckpts, tmp_path, name, batch, length):
    ids = _ids(name, batch, length)
    ref = nt.hf_logits(models[name], ids)
    hf_bf16 = nt.hf_logits(nt.build_model(nt.SPECS_BY_NAME[name]).to(torch.bfloat16), ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path, dtype="bf16", device="cuda")
    assert ours.shape == ref.shape
    _check_bf16(name, ours, ref, hf_bf16)


@cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name,batch,length", CASES, ids=CASE_IDS)
def test_cuda_with_ssd_kernel_matches_hf(models, ckpts, tmp_path, monkeypatch, name, batch, length, dtype):
    # The SSD kernels are opt-in until timed on a GPU; with them on, every op
    # of the Mamba mixer runs our kernels, and the bars stay those above.
    monkeypatch.setenv("MINIPUZZLE_SSD_KERNEL", "1")
    ids = _ids(name, batch, length)
    ref = nt.hf_logits(models[name], ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path, dtype=dtype, device="cuda", tag="ssd")
    assert ours.shape == ref.shape
    if dtype == "fp32":
        err = (ours - ref).abs().max().item()
        assert err < FP32_TOL, f"cuda fp32 + SSD kernel {name} b={batch} L={length}: {_report(ours, ref)}"
    else:
        hf_bf16 = nt.hf_logits(nt.build_model(nt.SPECS_BY_NAME[name]).to(torch.bfloat16), ids)
        _check_bf16(name, ours, ref, hf_bf16)
