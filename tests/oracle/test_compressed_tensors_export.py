"""`minipuzzle export --dtype fp8|nvfp4|int4`: compressed-tensors exports
checked by the `compressed-tensors` package (its decompressors give exactly
our dequantized weights, `export --dequantized`) and by transformers (loads
the export on CPU; its logits match our dequantized model's).

Two models: "q128" has every projection width a multiple of 128 (all three
formats quantize everything); m_a_f_g1 (hidden 48) has widths int4's group
of 128 cannot pack, which stay bf16 and are listed in `ignore`.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import nemotron_tiny as nt

# pinned in tools/requirements.txt: a missing package fails the test, never skips it
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationScheme

Q128 = nt.TinySpec("q128", seed=21, vocab=300, hidden=128, pattern="M*-M-",
                   attn_heads=4, kv_heads=2, attn_head_dim=32, ffn=256,
                   mamba_heads=8, mamba_head_dim=16, state=16, groups=1, chunk=16)
SPECS = {"q128": Q128, "m_a_f_g1": nt.SPECS_BY_NAME["m_a_f_g1"]}
FORMATS = {"fp8": "float-quantized", "nvfp4": "nvfp4-pack-quantized", "int4": "pack-quantized"}
GROUP = {"fp8": 1, "nvfp4": 16, "int4": 128}
# relative Frobenius error bounds for random Gaussian-like weights
MAX_REL = {"fp8": 0.05, "nvfp4": 0.2, "int4": 0.2}


@pytest.fixture(scope="module")
def models():
    return {n: nt.build_model(s) for n, s in SPECS.items()}


@pytest.fixture(scope="module")
def src(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    return {n: nt.save_checkpoint(models[n], SPECS[n], root / n, "hub") for n in SPECS}


@pytest.fixture(scope="module")
def exports(src, tmp_path_factory):
    """(model, format) -> (compressed export, dequantized bf16 export, stdout)."""
    root = tmp_path_factory.mktemp("ct")
    out = {}
    for n in SPECS:
        for f in FORMATS:
            q, d = root / f"{n}-{f}", root / f"{n}-{f}-dq"
            r = nt.run_cli("export", src[n], "--out", q, "--dtype", f)
            nt.run_cli("export", src[n], "--out", d, "--dtype", f, "--dequantized")
            out[(n, f)] = (q, d, r.stdout)
    return out


def read_all(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def projections(model):
    return [k for k, v in nt.hub_state_dict(model).items() if k.endswith("_proj.weight") and v.dim() == 2]


def packable(shape, fmt):
    return shape[1] % GROUP[fmt] == 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SPECS)
def test_decompressed_equals_our_dequantized_weights(models, exports, name, fmt):
    q, d, _ = exports[(name, fmt)]
    cfg = json.loads((q / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == FORMATS[fmt]
    scheme = QuantizationScheme.model_validate(cfg["config_groups"]["group_0"])
    compressor = BaseCompressor.load_from_registry(FORMATS[fmt])
    packed, dequant = read_all(q), read_all(d)
    hub = nt.hub_state_dict(models[name])
    assert set(dequant) == set(hub)
    quantized = [k for k in projections(models[name]) if packable(hub[k].shape, fmt)]
    if name == "q128":
        assert quantized == projections(models[name])
    for k in hub:
        if k not in quantized:  # bf16 in both, the plain conversion
            assert packed[k].dtype == torch.bfloat16 and torch.equal(packed[k], hub[k].to(torch.bfloat16)), k
            assert torch.equal(dequant[k], packed[k]), k
            continue
        module = k[: -len("weight")]
        local = {s[len(module):]: t for s, t in packed.items() if s.startswith(module)}
        assert set(local) == set(compressor.compression_param_names(scheme)), (k, sorted(local))
        w = compressor.decompress(local, scheme)["weight"]
        assert w.shape == hub[k].shape and dequant[k].dtype == torch.bfloat16, k
        assert w.dtype == torch.bfloat16, (k, w.dtype)
        assert torch.equal(w.view(torch.int16), dequant[k].view(torch.int16)), (k, (w.float() - dequant[k].float()).abs().max())
    # nothing but the quantized modules' tensors and the bf16 rest
    extra = {k for k in packed if k not in hub}
    assert all(any(k.startswith(m[: -len("weight")]) for m in quantized) for k in extra), sorted(extra)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SPECS)
def test_report_lists_every_projection_with_its_error(models, exports, name, fmt):
    q, d, stdout = exports[(name, fmt)]
    rep = json.loads((q / "quantization_report.json").read_text())
    hub = nt.hub_state_dict(models[name])
    dequant = read_all(d)
    names = {t["name"] for t in rep["tensors"]}
    kept = {t["name"] for t in rep["kept_bf16"]}
    assert names | kept == set(projections(models[name])) and not names & kept
    for t in rep["tensors"]:
        w = hub[t["name"]].float()
        want = ((dequant[t["name"]].float() - w).norm() / w.norm()).item()
        assert t["relative_error"] == pytest.approx(want, rel=1e-4, abs=1e-7), t["name"]
        assert 0 < t["relative_error"] < MAX_REL[fmt], t
    for t in rep["kept_bf16"]:
        assert not packable(hub[t["name"]].shape, fmt) and t["name"] in stdout
    if rep["tensors"]:
        assert rep["worst"]["relative_error"] == max(t["relative_error"] for t in rep["tensors"])
        assert f"worst {rep['worst']['relative_error']:.4g}" in stdout
    # kept projections are in `ignore` (module-name patterns that match transformers' names)
    import re
    ignore = json.loads((q / "config.json").read_text())["quantization_config"]["ignore"]
    pats = [re.compile(p[3:]) for p in ignore if p.startswith("re:")]
    for k in kept:
        tf_name = "model." + k[len("backbone."):-len(".weight")]
        assert any(p.match(tf_name) for p in pats), (k, ignore)
    for k in names:
        tf_name = "model." + k[len("backbone."):-len(".weight")]
        assert not any(p.match(tf_name) for p in pats), (k, ignore)


def test_formats_shrink_the_weights(exports):
    size = {f: sum(p.stat().st_size for p in exports[("q128", f)][0].glob("*.safetensors")) for f in FORMATS}
    bf16 = sum(p.stat().st_size for p in exports[("q128", "fp8")][1].glob("*.safetensors"))
    assert size["nvfp4"] < size["fp8"] < bf16 and size["int4"] < size["fp8"], (size, bf16)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SPECS)
def test_transformers_loads_the_export_and_matches_our_dequantized_logits(exports, name, fmt, tmp_path):
    """m_a_f_g1 covers the kept-bf16 projections: transformers must leave them (they are in `ignore`)."""
    from transformers import AutoModelForCausalLM
    q, d, _ = exports[(name, fmt)]
    ids = nt.random_tokens(SPECS[name].vocab, 2, 21, seed=5)
    model = AutoModelForCausalLM.from_pretrained(str(q), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        hf = model(ids).logits.float()
    # ours: the dequantized bf16 checkpoint through `minipuzzle logits` (fp32 compute)
    ours = nt.cli_logits(d, ids, tmp_path, dtype="fp32")
    ref = nt.load_hf(d, dtype=torch.bfloat16)
    with torch.no_grad():
        hf_dq = ref(ids).logits.float()
    scale = ours.abs().max().item()
    # bf16 compute in transformers vs fp32 in ours: bf16-level agreement
    assert (hf - ours).abs().max().item() <= 0.05 * scale, ((hf - ours).abs().max(), scale)
    # the compressed model is the dequantized one, op for op in transformers
    assert (hf - hf_dq).abs().max().item() <= 0.02 * scale, ((hf - hf_dq).abs().max(), scale)


def test_a_compressed_export_is_not_an_input(exports, tmp_path):
    q, _, _ = exports[("q128", "nvfp4")]
    r = nt.run_cli("export", q, "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "compressed-tensors export" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["nvfp4", "int4"])
def test_the_demo_teachers_export_loads_with_auto_classes(fmt, tmp_path):
    """The demo teacher (examples/demo/teacher, byte-level tokenizer files) exported: AutoTokenizer and
    AutoModelForCausalLM both load it and the model continues a prompt the tokenizer encoded."""
    from pathlib import Path
    from transformers import AutoModelForCausalLM, AutoTokenizer
    teacher = Path(__file__).resolve().parents[2] / "examples" / "demo" / "teacher"
    out = tmp_path / fmt
    nt.run_cli("export", teacher, "--out", out, "--dtype", fmt)
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    enc = tok("def forward(self, x):\n", return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == 1 and enc["input_ids"].shape[1] == 1 + len("def forward(self, x):\n")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert isinstance(text, str) and gen.shape[1] > enc["input_ids"].shape[1]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SPECS)
def test_our_tools_read_the_export_as_its_dequantized_weights(exports, name, fmt, tmp_path):
    """`minipuzzle logits` (any command that loads weights) on a compressed export gives exactly the
    logits of the dequantized bf16 checkpoint: the reader decompresses as compressed-tensors does."""
    q, d, _ = exports[(name, fmt)]
    ids = nt.random_tokens(SPECS[name].vocab, 1, 13, seed=7)
    a = nt.cli_logits(q, ids, tmp_path, tag="q")
    b = nt.cli_logits(d, ids, tmp_path, tag="d")
    assert torch.equal(a, b)
