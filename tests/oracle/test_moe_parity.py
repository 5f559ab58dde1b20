"""MoE (`E`) layers: `minipuzzle logits` vs transformers' NemotronHForCausalLM.

Small random MoE models made by transformers (moe_tiny.py): experts not a
power of two, n_group > 1 with topk_group < n_group, latent projections or
none, a shared expert wider or narrower than the routed ones, exact ties in
the router scores. fp32: max |ours - HF| < 1e-5 on every logit; bf16: the
bar of test_forward_parity (relative to HF's own bf16 error). Also: the
three checkpoint layouts load, our export loads in transformers, and bad
expert tensors / configs are one-line exit-2 errors.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import moe_tiny as mt
import nemotron_tiny as nt
from test_forward_parity import _check_bf16, _report

FP32_TOL = 1e-5
NAMES = [s.name for s in mt.SPECS]


@pytest.fixture(scope="module")
def models():
    return {s.name: mt.build_model(s) for s in mt.SPECS}


@pytest.fixture(scope="module")
def ckpts(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_ckpt")
    cache = {}

    def get(name, style="hub"):
        if (name, style) not in cache:
            cache[(name, style)] = mt.save_checkpoint(models[name], mt.SPECS_BY_NAME[name], root / f"{name}_{style}",
                                                      style)
        return cache[(name, style)]
    return get


def _ids(name, batch, length):
    spec = mt.SPECS_BY_NAME[name]
    return nt.random_tokens(spec.vocab, batch, length, seed=100 * spec.seed + 7 * batch + length)


def _router_choices(model, ids):
    """The top-k indices of every MoE layer's router, captured from transformers."""
    got = []
    hooks = [layer.mixer.gate.register_forward_hook(lambda m, i, o: got.append(o[2].clone()))
             for layer in model.model.layers if layer.block_type == "moe"]
    try:
        nt.hf_logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return got


def test_fixture_ties_are_broken_inside_a_tied_pair(models):
    """e8_ties picks 3 of a group of 4 experts made of two identical pairs, so
    every token takes exactly one expert of some tied pair: the tie-breaking
    decides the output (the twins' expert weights differ)."""
    choices = _router_choices(models["e8_ties"], _ids("e8_ties", 2, 11))
    first = choices[0]
    pairs = first // 2
    split = [(row == p).sum().item() == 1 for row in pairs for p in row.unique()]
    assert any(split)
    up = models["e8_ties"].model.layers[0].mixer.experts.up_proj
    assert not torch.equal(up[0], up[1])


def test_fixture_group_limit_matters(models):
    """With n_group 3 / topk_group 2, some token's plain top-3 (with bias) lies
    outside the two best groups: the group limit changes the choice."""
    m = models["e6_g3"]
    gate = m.model.layers[1].mixer.gate
    x = torch.randn(64, m.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, idx = gate(x)
        s = torch.sigmoid(x @ gate.weight.T) + gate.e_score_correction_bias
        plain = s.topk(3, dim=-1)[1]
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(idx, plain))


# Every model at one shape; the edge shapes (one token: most experts get no
# slot; a longer batch) on one model each.
@pytest.mark.parametrize("name,batch,length", [(n, 2, 13) for n in NAMES] + [("e8_ties", 1, 1),
                                                                              ("e10_latent", 3, 20)])
def test_fp32_parity_hub_style(models, ckpts, tmp_path, name, batch, length):
    ids = _ids(name, batch, length)
    ref = nt.hf_logits(models[name], ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path)
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err < FP32_TOL, f"{name} b={batch} L={length}: {_report(ours, ref)}"


# The layouts differ in names and the fused experts' shapes (latent or not),
# not in routing: each layout once, fused with and without latent sizes.
@pytest.mark.parametrize("name,style", [("e6_g3", "fused"), ("e10_latent", "fused"), ("e8_ties", "tf5")])
def test_fp32_parity_other_layouts(models, ckpts, tmp_path, name, style):
    ids = _ids(name, 2, 9)
    ref = nt.hf_logits(models[name], ids)
    ours = nt.cli_logits(ckpts(name, style), ids, tmp_path)
    err = (ours - ref).abs().max().item()
    assert err < FP32_TOL, f"{name} {style}: {_report(ours, ref)}"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_close_to_hf_fp32(models, ckpts, tmp_path, name):
    ids = _ids(name, 2, 17)
    ref = nt.hf_logits(models[name], ids)
    hf_model = mt.build_model(mt.SPECS_BY_NAME[name]).to(torch.bfloat16)
    # transformers' default bf16 experts path (torch._grouped_mm) needs 16-byte
    # aligned widths; its eager loop is the reference semantics anyway.
    hf_model.set_experts_implementation("eager")
    hf_bf16 = nt.hf_logits(hf_model, ids)
    ours = nt.cli_logits(ckpts(name, "hub"), ids, tmp_path, dtype="bf16")
    _check_bf16(name, ours, ref, hf_bf16)


@pytest.mark.parametrize("name", ["e6_g3", "e10_latent"])
def test_export_loads_in_transformers(models, ckpts, tmp_path, name):
    """Our fp32 export (Hub names, one tensor per expert) is what transformers
    loads back into the same model: equal state, equal logits."""
    out = tmp_path / "export"
    nt.run_cli("export", ckpts(name, "hub"), "--out", out, "--dtype", "fp32")
    tensors = load_file(str(out / "model.safetensors"))
    assert any(".mixer.experts.0.up_proj.weight" in k for k in tensors)
    assert not any(k.endswith("mixer.experts.up_proj") for k in tensors)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hybrid_override_pattern"] == mt.SPECS_BY_NAME[name].pattern
    assert cfg["n_routed_experts"] == mt.SPECS_BY_NAME[name].experts
    m2 = nt.load_hf(out)
    sd, sd2 = models[name].state_dict(), m2.state_dict()
    assert sorted(sd) == sorted(sd2)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    ids = _ids(name, 1, 8)
    assert torch.equal(nt.hf_logits(models[name], ids), nt.hf_logits(m2, ids))


# ----------------------------------------------------------------------------
# bad input: one line, exit 2
# ----------------------------------------------------------------------------

def _expect_user_error(args, *must_contain):
    r = nt.run_cli(*args, check=False)
    lines = r.stderr.strip("\n").split("\n")
    assert r.returncode == 2, f"rc {r.returncode}: {r.stderr}"
    assert len(lines) == 1 and lines[0].strip(), r.stderr
    for s in must_contain:
        assert s in lines[0], lines[0]


def _copy(ckpts, name, style, tmp_path):
    d = tmp_path / f"bad_{style}"
    shutil.copytree(ckpts(name, style), d)
    return d


def _edit(d, fn):
    p = d / "model.safetensors"
    t = load_file(str(p))
    fn(t)
    save_file(t, str(p), metadata={"format": "pt"})


def test_wrong_expert_shape_is_a_user_error(ckpts, tmp_path):
    d = _copy(ckpts, "e6_g3", "hub", tmp_path)
    name = "backbone.layers.1.mixer.experts.4.up_proj.weight"
    _edit(d, lambda t: t.__setitem__(name, t[name][:-1].clone()))
    ids = _ids("e6_g3", 1, 4)
    save_file({"input_ids": ids}, str(tmp_path / "tok.safetensors"))
    _expect_user_error(["logits", d, "--tokens", tmp_path / "tok.safetensors", "--out", tmp_path / "o.safetensors"],
                       "experts.4.up_proj", "shape")


def test_missing_expert_is_a_user_error(ckpts, tmp_path):
    d = _copy(ckpts, "e6_g3", "hub", tmp_path)
    _edit(d, lambda t: t.pop("backbone.layers.3.mixer.experts.5.down_proj.weight"))
    save_file({"input_ids": _ids("e6_g3", 1, 4)}, str(tmp_path / "tok.safetensors"))
    _expect_user_error(["logits", d, "--tokens", tmp_path / "tok.safetensors", "--out", tmp_path / "o.safetensors"],
                       "experts.5.down_proj")


def test_fused_expert_count_mismatch_is_a_user_error(ckpts, tmp_path):
    d = _copy(ckpts, "e6_g3", "fused", tmp_path)
    name = "model.layers.3.mixer.experts.up_proj"
    _edit(d, lambda t: t.__setitem__(name, t[name][:5].clone()))
    save_file({"input_ids": _ids("e6_g3", 1, 4)}, str(tmp_path / "tok.safetensors"))
    _expect_user_error(["logits", d, "--tokens", tmp_path / "tok.safetensors", "--out", tmp_path / "o.safetensors"],
                       "experts.up_proj", "shape")


@pytest.mark.parametrize("key", ["n_routed_experts", "moe_intermediate_size", "num_experts_per_tok",
                                 "moe_shared_expert_intermediate_size"])
def test_missing_moe_key_is_a_user_error(ckpts, tmp_path, key):
    d = _copy(ckpts, "e6_g3", "hub", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg[key]
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_user_error(["inspect", d], key)


@pytest.mark.parametrize("edit,needle", [
    ({"n_group": 4}, "n_group"),                       # 6 experts do not split into 4 groups
    ({"topk_group": 4}, "topk_group"),                 # more groups kept than exist
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),  # > 2 groups x 2 experts
    ({"n_group": 6, "topk_group": 1}, "per group"),    # groups of one expert
])
def test_infeasible_moe_config_is_a_user_error(ckpts, tmp_path, edit, needle):
    d = _copy(ckpts, "e6_g3", "hub", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(edit)
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_user_error(["inspect", d], needle)


# ----------------------------------------------------------------------------
# inspect
# ----------------------------------------------------------------------------

NANO_30B = Path(__file__).resolve().parents[1] / "search" / "configs" / "nemotron-3-nano-30b-a3b.config.json"
COUNTS = Path(__file__).resolve().parents[1] / "search" / "transformers_param_counts.json"


def test_inspect_nano_30b_counts_total_and_active():
    """The published config (a copy of ../shared/reference's): transformers'
    31.58B total and the active count per token (6 of 128 experts)."""
    hf = json.loads(COUNTS.read_text())["configs"]["nemotron-3-nano-30b-a3b"]
    j = json.loads(nt.run_cli("inspect", NANO_30B, "--json").stdout)
    assert j["parameters"]["total"] == hf["total"] == 31577937344
    assert j["parameters"]["active"] == hf["active"]
    assert j["architecture"]["counts"]["moe"] == 23
    assert j["memory"]["weights_bytes"] == 2 * hf["total"]  # bf16, every expert resident
    t = nt.run_cli("inspect", NANO_30B).stdout
    assert "total (31.58B)" in t and "active per token (3.58B)" in t, t
    assert "23 MoE (E)" in t


def test_inspect_tiny_moe_matches_transformers_numel(models, ckpts):
    """Total and active of a tiny MoE model against its transformers module."""
    name = "e10_latent"
    m, spec = models[name], mt.SPECS_BY_NAME[name]
    j = json.loads(nt.run_cli("inspect", ckpts(name, "hub"), "--json").stdout)
    total = sum(p.numel() for p in m.parameters())
    routed = sum(p.numel() for n, p in m.named_parameters() if n.endswith(("experts.up_proj", "experts.down_proj")))
    assert j["parameters"]["total"] == total
    assert j["parameters"]["active"] == total - routed // spec.experts * (spec.experts - spec.k)


# ----------------------------------------------------------------------------
# other commands: eval works (teacher-logits, distill, train: test_moe_training.py)
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_corpus")
    files = []
    for i, text in enumerate(["The experts route tokens by score. " * 6, "Mamba layers keep a state; " * 7,
                              "Attention looks back at every token. " * 5]):
        p = root / f"doc{i}.txt"
        p.write_text(text)
        files.append(p)
    prefix = tmp_path_factory.mktemp("moe_data") / "tiny"
    nt.run_cli("data", "build", "--input", *files, "--out", prefix)
    return prefix


@pytest.mark.parametrize("name", ["e6_g3", "e10_latent"])
def test_eval_matches_hf(models, ckpts, dataset, name):
    from test_eval_parity import cli_eval, hf_eval
    ref = hf_eval(models[name], dataset, 24, batch=3)
    ours = cli_eval(ckpts(name, "hub"), dataset, 24, 3)
    assert ours["tokens"] == ref["tokens"]
    assert abs(ours["loss"] - ref["loss"]) <= 1e-4 * ref["loss"], (ours, ref)


def test_streamed_eval_equals_resident(ckpts, dataset):
    """`eval --max-device-memory` below the model streams the MoE blocks' weights
    (experts included) and gives the resident run's loss."""
    d = ckpts("e6_g3", "hub")
    args = ["eval", d, "--data", dataset, "--seq-len", 16, "--batch", 1, "--json"]
    resident = json.loads(nt.run_cli(*args).stdout)
    streamed = json.loads(nt.run_cli(*args, "--max-device-memory", "250KB").stdout)
    assert resident["residency"] == "resident" and streamed["residency"] == "streamed", (resident, streamed)
    assert streamed["weight_bytes_peak"] < resident["weight_bytes_peak"]
    assert streamed["loss"] == resident["loss"]


@pytest.mark.parametrize("layout", ["hub", "fused"])
def test_bf16_export_keeps_the_router_bias_fp32(ckpts, tmp_path, layout):
    """transformers keeps e_score_correction_bias in fp32 in a bf16 model: a
    bf16 export (streamed, or through the fused layout's whole-model path)
    writes it in fp32 and everything else in bf16."""
    out = tmp_path / f"export-{layout}"
    nt.run_cli("export", ckpts("e6_g3", layout), "--out", out, "--dtype", "bf16")
    tensors = load_file(str(out / "model.safetensors"))
    biases = [k for k in tensors if k.endswith("e_score_correction_bias")]
    assert biases
    for k, v in tensors.items():
        assert v.dtype == (torch.float32 if k in biases else torch.bfloat16), (k, v.dtype)


def test_export_of_fused_layout_writes_hub_layout(models, ckpts, tmp_path):
    """A transformers-5 fused checkpoint exports to the Hub layout, which
    transformers loads back into the same model."""
    name = "e10_latent"
    out = tmp_path / "export"
    nt.run_cli("export", ckpts(name, "fused"), "--out", out, "--dtype", "fp32")
    tensors = load_file(str(out / "model.safetensors"))
    assert "backbone.layers.0.mixer.experts.9.down_proj.weight" in tensors
    assert not any(k.endswith("mixer.experts.up_proj") for k in tensors)
    m2 = nt.load_hf(out)
    for k, v in models[name].state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
