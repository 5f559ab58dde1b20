"""`minipuzzle export --dtype fp8 --format fp8-transformers`: read back with the Python `safetensors`
package (and, when `accelerate` is installed, with transformers' FP8 loader).

Layout (include/minipuzzle/checkpoint.h): every `*_proj.weight` is
float8_e4m3fn with a float32 `*_proj.weight_scale_inv` [rows, 1],
weight = fp8 * scale; every other tensor is bfloat16; config.json has
"quantization_config" {"quant_method": "fp8", ...}.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import nemotron_tiny as nt

NAMES = ("m_a_f_g1", "g4_gqa")


@pytest.fixture(scope="module")
def models():
    return {n: nt.build_model(nt.SPECS_BY_NAME[n]) for n in NAMES}


@pytest.fixture(scope="module")
def src(models, tmp_path_factory):
    return nt.checkpoint_cache(models, tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def exported(src, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    out = {}
    for n in NAMES:
        out[n] = root / n
        nt.run_cli("export", src(n), "--out", out[n], "--dtype", "fp8", "--format", "fp8-transformers")
    return out


def read_all(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        return {k: f.get_tensor(k) for k in f.keys()}


def dequantized_state(model, tensors):
    """HF state dict of the model the FP8 file describes, in fp32."""
    out = {}
    for k, v in nt.hub_state_dict(model).items():
        t = tensors[k]
        if t.dtype == torch.float8_e4m3fn:
            out[k] = t.float() * tensors[k + "_scale_inv"]
        else:
            out[k] = t.float()
    return out


def model_from(spec, hub_state):
    m = nt.build_model(spec)
    with torch.no_grad():
        for k, p in m.state_dict().items():
            hub = "backbone." + k[len("model."):] if k.startswith("model.") else k
            p.copy_(hub_state[hub])
    return m


@pytest.mark.parametrize("name", NAMES)
def test_layout_and_error(models, exported, name):
    out = exported[name]
    tensors = read_all(out)
    hub = nt.hub_state_dict(models[name])
    quantized = [k for k in hub if k.endswith("_proj.weight")]
    assert len(quantized) >= 4
    assert set(tensors) == set(hub) | {k + "_scale_inv" for k in quantized}, sorted(set(tensors) ^ set(hub))
    for k, w in hub.items():
        t = tensors[k]
        assert t.shape == w.shape, k
        if k not in quantized:
            assert t.dtype == torch.bfloat16, (k, t.dtype)
            assert torch.equal(t, w.to(torch.bfloat16)), k
            continue
        s = tensors[k + "_scale_inv"]
        assert t.dtype == torch.float8_e4m3fn, (k, t.dtype)
        assert s.dtype == torch.float32 and s.shape == (w.shape[0], 1), (k, s.dtype, s.shape)
        dq = t.float() * s
        # E4M3 rounding: <= 2^-4 relative for normals, <= 2^-10 * scale for subnormals
        err = (dq - w).abs()
        assert (err <= w.abs() * 2**-4 + s * 2**-10 + 1e-7 * w.abs()).all(), k
        rel = (dq - w).norm(dim=1) / w.norm(dim=1)
        assert rel.max() <= 2**-3, (k, rel.max())
        # the documented recipe, bit for bit: scale = rowmax / 448, fp8 = RNE(w / scale)
        amax = w.abs().amax(dim=1, keepdim=True)
        want_s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
        assert torch.equal(s, want_s), k
        want_q = (w / want_s).clamp(-448, 448).to(torch.float8_e4m3fn)
        assert torch.equal(t.view(torch.uint8), want_q.view(torch.uint8)), k


@pytest.mark.parametrize("name", NAMES)
def test_config(models, exported, name):
    cfg = json.loads((exported[name] / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    assert cfg["hybrid_override_pattern"] == nt.SPECS_BY_NAME[name].pattern
    widest = max(p.shape[1] for k, p in nt.hub_state_dict(models[name]).items() if k.endswith("_proj.weight"))
    assert cfg["quantization_config"] == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": [1, widest], "modules_to_not_convert": ["lm_head"]}


def test_plain_exports_have_no_quantization_config(src, exported, tmp_path):
    for dtype in ("bf16", "fp16", "fp32"):
        nt.run_cli("export", src("m_a_f_g1"), "--out", tmp_path / dtype, "--dtype", dtype)
        assert "quantization_config" not in json.loads((tmp_path / dtype / "config.json").read_text())
    # fp8 -> bf16 drops it too
    nt.run_cli("export", exported["m_a_f_g1"], "--out", tmp_path / "again", "--dtype", "bf16")
    assert "quantization_config" not in json.loads((tmp_path / "again" / "config.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_our_binary_reads_it_back(models, exported, name, tmp_path):
    """Our loader dequantizes to exactly fp8 * scale: logits equal HF's on those weights."""
    spec = nt.SPECS_BY_NAME[name]
    ids = nt.random_tokens(spec.vocab, 2, 23, seed=9)
    deq = model_from(spec, dequantized_state(models[name], read_all(exported[name])))
    ours = nt.cli_logits(exported[name], ids, tmp_path)
    want = nt.hf_logits(deq, ids)
    assert (ours - want).abs().max().item() < 1e-4
    # and FP8 costs accuracy within reason: within 32x of what bf16 costs (E4M3's
    # unit roundoff 2^-4 is 16x bf16's 2^-8; 2x margin)
    ref = nt.hf_logits(models[name], ids)
    bf16 = model_from(spec, {k: v.to(torch.bfloat16).float() for k, v in nt.hub_state_dict(models[name]).items()})
    err8, errb = (ours - ref).abs().max().item(), (nt.hf_logits(bf16, ids) - ref).abs().max().item()
    print(f"{name}: fp8 logit error {err8:.4g}, bf16 {errb:.4g}, ratio {err8 / errb:.3g}")
    assert errb < err8 <= 32 * errb, (err8, errb)


@pytest.mark.parametrize("name", NAMES)
def test_transformers_loads_it(models, exported, name):
    """transformers (FineGrainedFP8, dequantizing on CPU) gets the same weights, rounded to bf16."""
    spec = nt.SPECS_BY_NAME[name]
    loaded = nt.load_hf(exported[name], dtype=torch.bfloat16)
    deq = dequantized_state(models[name], read_all(exported[name]))
    for k, v in loaded.state_dict().items():
        hub = "backbone." + k[len("model."):] if k.startswith("model.") else k
        assert torch.equal(v.float(), deq[hub].to(torch.bfloat16).float()), k
    ids = nt.random_tokens(spec.vocab, 1, 17, seed=10)
    want = nt.hf_logits(model_from(spec, {k: v.to(torch.bfloat16).float() for k, v in deq.items()}), ids)
    assert (nt.hf_logits(loaded.float(), ids) - want).abs().max().item() < 1e-5


def test_damaged_fp8_checkpoints_exit_2(exported, tmp_path):
    good = exported["m_a_f_g1"]
    tensors = read_all(good)
    scale = "backbone.layers.0.mixer.in_proj.weight_scale_inv"

    def variant(tag, edit):
        d = tmp_path / tag
        d.mkdir()
        (d / "config.json").write_text((good / "config.json").read_text())
        t = dict(tensors)
        edit(t)
        save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d

    cases = [
        (variant("missing", lambda t: t.pop(scale)), "is missing"),
        (variant("flat", lambda t: t.__setitem__(scale, t[scale].flatten().contiguous())), "has shape"),
        (variant("short", lambda t: t.__setitem__(scale, t[scale][1:].contiguous())), "has shape"),
    ]
    for d, needle in cases:
        r = nt.run_cli("export", d, "--out", tmp_path / (d.name + "_out"), "--dtype", "bf16", check=False)
        assert r.returncode == 2, (d.name, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and scale in lines[0] and needle in lines[0], (d.name, r.stderr)
        assert not (tmp_path / (d.name + "_out")).exists()


def test_sharded_fp8_export_reads_back(src, exported, tmp_path):
    """Weights and their scales may land in different shards."""
    out = tmp_path / "sharded"
    nt.run_cli("export", src("g4_gqa"), "--out", out, "--dtype", "fp8", "--format", "fp8-transformers", "--max-shard-size", "20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2, shards
    assert set(index["weight_map"]) == set(read_all(exported["g4_gqa"]))
    ids = nt.random_tokens(nt.SPECS_BY_NAME["g4_gqa"].vocab, 1, 15, seed=11)
    a = nt.cli_logits(out, ids, tmp_path / "a")
    b = nt.cli_logits(exported["g4_gqa"], ids, tmp_path / "b")
    assert torch.equal(a, b)
