"""`minipuzzle export` writes checkpoints HF transformers and `safetensors` read as is.

Checked for every export: the Python `safetensors` package opens every file
(safe_open), metadata == {"format": "pt"}, header length a multiple of 8,
names are Hub names (backbone.*, lm_head.weight) and shapes/dtypes as
requested; config.json is Hub style (hybrid_override_pattern); a sharded
export has an index whose weight_map names every tensor once and whose
metadata.total_size is the sum of the tensor bytes; HF from_pretrained gives
back the original weights (fp32: bit-exact, logits within 1e-5; bf16/fp16:
equal to the original rounded to that dtype, logits equal to HF on the
rounded weights within 1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import nemotron_tiny as nt

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def models():
    return {n: nt.build_model(nt.SPECS_BY_NAME[n]) for n in ("m_a_f_g1", "g4_gqa")}


@pytest.fixture(scope="module")
def src(models, tmp_path_factory):
    return nt.checkpoint_cache(models, tmp_path_factory.mktemp("src"))


def read_export(out: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """All tensors of an exported dir, checking every file with safetensors."""
    index = out / "model.safetensors.index.json"
    if index.exists():
        idx = json.loads(index.read_text())
        weight_map = idx["weight_map"]
        files = sorted({out / f for f in weight_map.values()})
        for f in weight_map.values():
            assert "/" not in f and "\\" not in f and ".." not in f, f
    else:
        files = [out / "model.safetensors"]
        weight_map = None
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        assert f.is_file(), f"{f} missing"
        hlen, header = nt.safetensors_header(f)
        assert hlen % 8 == 0, f"{f.name}: header length {hlen} not a multiple of 8"
        assert header.get("__metadata__") == {"format": "pt"}, header.get("__metadata__")
        with safe_open(str(f), framework="pt") as sf:
            assert sf.metadata() == {"format": "pt"}
            for k in sf.keys():
                assert k not in tensors, f"{k} in two shards"
                tensors[k] = sf.get_tensor(k)
                if weight_map is not None:
                    assert weight_map.get(k) == f.name, f"{k}: index says {weight_map.get(k)}, found in {f.name}"
    if weight_map is not None:
        assert set(weight_map) == set(tensors), set(weight_map) ^ set(tensors)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        assert idx["metadata"]["total_size"] == total, (idx["metadata"], total)
        assert not (out / "model.safetensors").exists(), "stray model.safetensors next to an index"
    return tensors, files


def _no_constants(name):
    raise AssertionError(f"config.json holds {name}, which is not JSON (RFC 8259); "
                         f"transformers writes infinity as {{\"__float__\": \"Infinity\"}}")


def strict_json(path: Path):
    return json.loads(path.read_text(), parse_constant=_no_constants)


def check_config(out: Path, spec):
    cfg = strict_json(out / "config.json")
    assert cfg.get("hybrid_override_pattern") == spec.pattern, cfg
    if "layers_block_type" in cfg:
        assert cfg["layers_block_type"] == spec.layer_types
    if "num_hidden_layers" in cfg:
        assert cfg["num_hidden_layers"] == len(spec.pattern)
    for key, want in [("vocab_size", spec.vocab), ("hidden_size", spec.hidden), ("head_dim", spec.attn_head_dim),
                      ("num_attention_heads", spec.attn_heads), ("num_key_value_heads", spec.kv_heads),
                      ("mamba_num_heads", spec.mamba_heads), ("mamba_head_dim", spec.mamba_head_dim),
                      ("ssm_state_size", spec.state), ("n_groups", spec.groups), ("chunk_size", spec.chunk),
                      ("intermediate_size", spec.ffn)]:
        assert cfg.get(key) == want, f"config.json {key} = {cfg.get(key)}, want {want}"
    assert cfg.get("model_type") == "nemotron_h"
    return cfg


def export(src_dir, out, *extra):
    nt.run_cli("export", src_dir, "--out", out, *extra)
    assert (out / "config.json").is_file()
    return out


def check_against(model, spec, out, dtype, ids):
    tensors, files = read_export(out)
    hub = nt.hub_state_dict(model)
    assert set(tensors) == set(hub), f"names differ: {sorted(set(tensors) ^ set(hub))}"
    for k, v in hub.items():
        assert tensors[k].dtype == dtype, f"{k}: {tensors[k].dtype}, want {dtype}"
        assert tensors[k].shape == v.shape, f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        assert torch.equal(tensors[k], v.to(dtype)), f"{k}: values differ from the original cast to {dtype}"
    check_config(out, spec)
    # HF loads it and gives the logits of the (rounded) weights
    loaded = nt.load_hf(out, dtype=torch.float32)
    rounded = nt.build_model(spec)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(dtype).float())
    lsd, rsd = loaded.state_dict(), rounded.state_dict()
    for k in rsd:
        assert torch.equal(lsd[k], rsd[k]), f"HF loaded {k} differently"
    err = (nt.hf_logits(loaded, ids) - nt.hf_logits(rounded, ids)).abs().max().item()
    assert err <= 1e-5, err
    return tensors, files


@pytest.mark.parametrize("style", ["hub", "tf5", "model_prefix"])
@pytest.mark.parametrize("name", ["m_a_f_g1", "g4_gqa"])
def test_export_fp32(models, src, tmp_path, name, style):
    spec = nt.SPECS_BY_NAME[name]
    out = export(src(name, style), tmp_path / "out", "--dtype", "fp32")
    ids = nt.random_tokens(spec.vocab, 2, 21, seed=5)
    _, files = check_against(models[name], spec, out, torch.float32, ids)
    assert [f.name for f in files] == ["model.safetensors"]
    # fp32: logits equal to the original model
    err = (nt.hf_logits(nt.load_hf(out), ids) - nt.hf_logits(models[name], ids)).abs().max().item()
    assert err <= 1e-5, err


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_export_half(models, src, tmp_path, dtype):
    name = "m_a_f_g1"
    spec = nt.SPECS_BY_NAME[name]
    out = export(src(name), tmp_path / "out", "--dtype", dtype)
    ids = nt.random_tokens(spec.vocab, 2, 21, seed=6)
    check_against(models[name], spec, out, DTYPES[dtype], ids)
    # and HF loads it in that dtype too
    m = nt.load_hf(out, dtype=DTYPES[dtype])
    assert all(p.dtype == DTYPES[dtype] for p in m.parameters())
    assert torch.isfinite(nt.hf_logits(m, ids)).all()


def test_export_sharded(models, src, tmp_path):
    name = "g4_gqa"
    spec = nt.SPECS_BY_NAME[name]
    largest = max(p.numel() * p.element_size() for p in models[name].parameters())
    size = f"{largest // 1000 + 1}KB"  # decimal, like HF: several shards
    out = export(src(name), tmp_path / "out", "--dtype", "fp32", "--max-shard-size", size)
    assert (out / "model.safetensors.index.json").is_file(), sorted(p.name for p in out.iterdir())
    ids = nt.random_tokens(spec.vocab, 2, 40, seed=7)
    tensors, files = check_against(models[name], spec, out, torch.float32, ids)
    assert len(files) >= 2, [f.name for f in files]
    limit = (largest // 1000 + 1) * 1000
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            keys = list(sf.keys())
        nbytes = sum(tensors[k].numel() * tensors[k].element_size() for k in keys)
        assert nbytes <= limit or len(keys) == 1, f"{f.name}: {nbytes} tensor bytes > {limit}"
    # our own binary reads the sharded export back
    ours = nt.cli_logits(out, ids, tmp_path / "logits")
    err = (ours - nt.hf_logits(models[name], ids)).abs().max().item()
    assert err < 1e-4, err


def test_export_bf16_sharded(models, src, tmp_path):
    name = "m_a_f_g1"
    spec = nt.SPECS_BY_NAME[name]
    out = export(src(name, "tf5_sharded"), tmp_path / "out", "--dtype", "bf16", "--max-shard-size", "30KB")
    assert (out / "model.safetensors.index.json").is_file()
    check_against(models[name], spec, out, torch.bfloat16, nt.random_tokens(spec.vocab, 1, 17, seed=8))


def test_export_of_export_is_identical(src, tmp_path):
    """Exporting an exported checkpoint changes no tensor byte."""
    a = export(src("m_a_f_g1"), tmp_path / "a", "--dtype", "fp32")
    b = export(a, tmp_path / "b", "--dtype", "fp32")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert strict_json(a / "config.json") == strict_json(b / "config.json")


def test_inspect_json(models, src):
    """inspect --json names the parameter counts that transformers' model has."""
    name = "g4_gqa"
    r = nt.run_cli("inspect", src(name), "--json")
    params = json.loads(r.stdout)["parameters"]
    model = models[name]
    assert params["total"] == sum(p.numel() for p in model.parameters()), params
    assert params["embeddings"] == sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n), params
    assert params["lm_head"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("lm_head")), params
