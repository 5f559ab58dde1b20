#!/usr/bin/env python3
"""Regenerates the seed corpus tests/fuzz/corpus/<target>/ (ok-* and bad-*
files; regression inputs found by fuzzing, named regress-*, are kept as
they are). Valid seeds come from the real writers: transformers'
save_pretrained (tools/make_tiny_model.py), the Python safetensors package,
numpy in Megatron's layout, and `minipuzzle score` / `minipuzzle search`.

    ~/.cache/minipuzzle/venv-py311/bin/python tests/fuzz/make_corpus.py --bin build/bin/minipuzzle

Needs the repo's venv (torch, transformers, safetensors, numpy)."""
import argparse
import copy
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import save as st_save

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests/fuzz/corpus"
SHARED = ROOT.parent / "shared/reference"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def jtext(obj):
    return json.dumps(obj, indent=1)


def st_raw(header, buffer=b"", pad=True):
    """A safetensors file from a header dict (or raw header bytes)."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + buffer


# ----------------------------------------------------------------- safetensors
def safetensors_seeds(tiny):
    t = "safetensors"
    put(t, "ok-python-two-tensors.safetensors",
        st_save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)},
                metadata={"format": "pt"}))
    put(t, "ok-python-dtypes.safetensors", st_save({
        "u8": np.zeros(3, np.uint8), "i16": np.ones(2, np.int16), "f16": np.ones(2, np.float16),
        "f64": np.ones(1, np.float64), "b": np.array([True, False]), "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32)}))
    put(t, "ok-tiny-model.safetensors", (tiny / "model.safetensors").read_bytes())
    put(t, "ok-empty-header.safetensors", st_raw({}))
    put(t, "ok-metadata-null.safetensors", st_raw({"__metadata__": None}))
    put(t, "ok-bf16-unaligned.safetensors",
        st_raw({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, b"\x01" * 6, pad=False))
    f32 = lambda shape, b, e: {"dtype": "F32", "shape": shape, "data_offsets": [b, e]}
    put(t, "bad-short.safetensors", b"\x02\x00\x00")
    put(t, "bad-empty.safetensors", b"")
    put(t, "bad-header-huge.safetensors", struct.pack("<Q", 2**63) + b"{}")
    put(t, "bad-header-over-limit.safetensors", struct.pack("<Q", 100_000_001) + b"{}")
    put(t, "bad-header-past-end.safetensors", struct.pack("<Q", 64) + b"{}")
    put(t, "bad-truncated-buffer.safetensors", st_raw({"a": f32([4], 0, 16)}, b"\0" * 8))
    put(t, "bad-overlap.safetensors", st_raw({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, b"\0" * 12))
    put(t, "bad-gap.safetensors", st_raw({"a": f32([1], 0, 4), "b": f32([1], 8, 12)}, b"\0" * 12))
    put(t, "bad-begin-after-end.safetensors", st_raw({"a": f32([0], 8, 4)}, b"\0" * 8))
    put(t, "bad-size-mismatch.safetensors", st_raw({"a": f32([3], 0, 8)}, b"\0" * 8))
    put(t, "bad-shape-overflow.safetensors", st_raw({"a": f32([2**32, 2**32, 2**32], 0, 0)}))
    put(t, "bad-bytes-overflow.safetensors", st_raw({"a": f32([2**62], 0, 0)}))
    put(t, "bad-negative-dim.safetensors", st_raw({"a": f32([-1, 4], 0, 16)}, b"\0" * 16))
    put(t, "bad-offset-huge.safetensors", st_raw({"a": f32([1], 2**64 - 4, 2**64)}))
    put(t, "bad-float-dim.safetensors", st_raw(b'{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', b"\0" * 4))
    put(t, "bad-unknown-dtype.safetensors", st_raw({"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0"))
    put(t, "bad-dtype-not-string.safetensors", st_raw({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
    put(t, "bad-missing-offsets.safetensors", st_raw({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4))
    put(t, "bad-duplicate-key.safetensors",
        st_raw(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"))
    put(t, "bad-metadata-not-string.safetensors", st_raw({"__metadata__": {"k": 1}}))
    put(t, "bad-metadata-array.safetensors", st_raw({"__metadata__": [1]}))
    put(t, "bad-not-utf8.safetensors", st_raw(b'{"\xff\xfe":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"))
    put(t, "bad-overlong-utf8.safetensors", st_raw(b'{"\xc0\xaf":1}'))
    put(t, "bad-leading-space.safetensors", st_raw(b' {}'))
    put(t, "bad-not-object.safetensors", st_raw(b"[1,2]"))
    put(t, "bad-entry-not-object.safetensors", st_raw({"a": 5}))
    put(t, "bad-json-syntax.safetensors", st_raw(b'{"a":'))
    put(t, "bad-deep-nesting.safetensors", st_raw(b'{"__metadata__":' + b"[" * 10000 + b"]" * 10000 + b"}"))


# ------------------------------------------------------------ checkpoint index
def index_seeds():
    t = "checkpoint_index"
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    good = {"metadata": {"total_size": 24}, "weight_map": {"a": s1, "b": s1, "c": s2}}
    put(t, "ok-index.json", jtext(good))
    put(t, "ok-no-metadata.json", jtext({"weight_map": {"a": s1, "b": s1, "c": s2}}))
    put(t, "ok-extra-keys.json", jtext({**good, "format": "pt", "other": [1, {"x": None}]}))

    def bad(name, wm, **extra):
        put(t, f"bad-{name}.json", jtext({"metadata": {"total_size": 24}, "weight_map": wm, **extra}))

    bad("dotdot", {"a": s1, "b": s1, "c": "../outside.safetensors"})
    bad("dotdot-only", {"a": s1, "b": s1, "c": ".."})
    bad("absolute", {"a": s1, "b": s1, "c": "/etc/passwd"})
    bad("subdir", {"a": s1, "b": s1, "c": "sub/model.safetensors"})
    bad("backslash", {"a": s1, "b": s1, "c": "..\\outside.safetensors"})
    bad("dot", {"a": s1, "b": s1, "c": "."})
    bad("empty-name", {"a": s1, "b": s1, "c": ""})
    bad("nul-in-name", {"a": s1, "b": s1, "c": s2 + "\u0000../../outside.safetensors"})
    bad("missing-shard", {"a": s1, "b": s1, "c": "model-00003-of-00003.safetensors"})
    bad("wrong-shard", {"a": s1, "b": s2, "c": s2})
    bad("unlisted-tensor", {"a": s1, "c": s2})
    bad("unknown-tensor", {"a": s1, "b": s1, "c": s2, "zzz": s2})
    bad("not-string", {"a": s1, "b": s1, "c": 2})
    put(t, "bad-no-weight-map.json", jtext({"metadata": {}}))
    put(t, "bad-weight-map-array.json", jtext({"weight_map": [s1, s2]}))
    put(t, "bad-not-object.json", "[]")
    put(t, "bad-empty.json", "")
    put(t, "bad-json-syntax.json", '{"weight_map": {"a": ')
    put(t, "bad-duplicate-key.json", '{"weight_map": {"a": "%s", "a": "%s", "b": "%s", "c": "%s"}}' % (s1, s2, s1, s2))
    put(t, "bad-deep-nesting.json", '{"metadata": ' + "[" * 10000 + "]" * 10000 + ', "weight_map": {}}')
    put(t, "bad-not-utf8.json", b'{"weight_map": {"\xff": "x"}}')


# ------------------------------------------------------------------ config.json
def config_seeds(tiny):
    t = "model_config"
    tiny_cfg = json.loads((tiny / "config.json").read_text())
    put(t, "ok-tiny-transformers5.json", (tiny / "config.json").read_bytes())
    for name in ("nemotron-h-8b", "nemotron-h-47b", "nemotron-h-56b"):
        p = SHARED / f"{name}.config.json"
        if p.exists():
            put(t, f"ok-{name}.json", p.read_bytes())
    hub = {"vocab_size": 32, "hidden_size": 16, "hybrid_override_pattern": "M*-M", "intermediate_size": 32,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "mamba_num_heads": 4,
           "mamba_head_dim": 4, "ssm_state_size": 4, "n_groups": 2, "conv_kernel": 4, "chunk_size": 8}
    put(t, "ok-hub-minimal.json", jtext(hub))
    put(t, "ok-python-infinity.json", jtext(hub)[:-2] + ',\n "time_step_limit": [0.0, Infinity], "x": NaN\n}')
    put(t, "ok-mlp-only.json", jtext({"vocab_size": 8, "hidden_size": 4, "hybrid_override_pattern": "--",
                                      "intermediate_size": 8}))

    def bad(name, **changes):
        c = copy.deepcopy(hub)
        for k, v in changes.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        put(t, f"bad-{name}.json", jtext(c))

    bad("missing-vocab", vocab_size=None)
    bad("negative-hidden", hidden_size=-16)
    bad("zero-hidden", hidden_size=0)
    bad("huge-hidden", hidden_size=2**40)
    bad("huge-vocab", vocab_size=2**62)
    bad("int64-overflow", vocab_size=2**64 - 1)
    bad("huge-heads-product", num_attention_heads=2**21, num_key_value_heads=1, head_dim=2**21)
    bad("huge-in-proj", mamba_num_heads=2**20, mamba_head_dim=2**20, n_groups=1)
    bad("too-many-layers", hybrid_override_pattern="-" * 5000)
    bad("unknown-layer", hybrid_override_pattern="M*X")
    bad("moe-layer", hybrid_override_pattern="ME")
    bad("empty-pattern", hybrid_override_pattern="")
    bad("heads-not-multiple", num_attention_heads=3, num_key_value_heads=2)
    bad("groups-not-multiple", mamba_num_heads=3, n_groups=2)
    bad("float-width", hidden_size=16.5)
    bad("string-width", hidden_size="16")
    bad("layers-mismatch", num_hidden_layers=7)
    bad("nan-epsilon", layer_norm_epsilon="NaN")
    bad("negative-epsilon", layer_norm_epsilon=-1e-5)
    bad("inf-time-step", time_step_min="Infinity")
    bad("conv-kernel-huge", conv_kernel=100000)
    put(t, "bad-absent-type-huge-dims.json", jtext({  # regression: int64 overflow in derived sizes
        "vocab_size": 8, "hidden_size": 4, "hybrid_override_pattern": "--", "intermediate_size": 8,
        "head_dim": 2**62, "num_key_value_heads": 2**62, "mamba_num_heads": 2**62, "mamba_head_dim": 2**62,
        "ssm_state_size": 2**62, "n_groups": -2**62}))
    bad("bias", attention_bias=True)
    bad("tied", tie_word_embeddings=True)
    bad("bool-as-int", use_conv_bias=1)
    bad("act", mlp_hidden_act="gelu")
    put(t, "bad-block-type-int.json", jtext({**{k: v for k, v in tiny_cfg.items()}, "layers_block_type": [1, 2]}))
    # transformers' config carries every MoE key: one "moe" layer is a valid MoE model.
    put(t, "ok-moe-layers-block-type.json", jtext({**tiny_cfg, "layers_block_type": ["moe"]}))
    no_moe_keys = {k: v for k, v in tiny_cfg.items() if k not in ("n_routed_experts", "moe_intermediate_size")}
    put(t, "bad-moe-missing-keys.json", jtext({**no_moe_keys, "layers_block_type": ["moe"]}))
    put(t, "bad-block-type-unknown.json", jtext({**tiny_cfg, "layers_block_type": ["conv"]}))
    put(t, "bad-not-object.json", "[1]")
    put(t, "bad-empty.json", "")
    put(t, "bad-syntax.json", '{"vocab_size": 32,')
    put(t, "bad-not-utf8.json", b'{"vocab_size": 32, "\xff": 1}')
    put(t, "bad-huge-exponent.json", jtext(hub)[:-2] + ',\n "layer_norm_epsilon": 1e999\n}')
    put(t, "bad-deep-nesting.json", '{"vocab_size": 0, "extra": ' + "[" * 10000 + "]" * 10000 + "}")
    put(t, "deep-nesting-accepted.json", jtext(hub)[:-2] + ',\n "extra": ' + "[" * 10000 + "]" * 10000 + "\n}")


# --------------------------------------------------------------- Megatron .idx
MAGIC = b"MMIDIDX\x00\x00"
CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8}


def idx_bytes(code, lengths, pointers=None, doc_idx=None, S=None, D=None, version=1, trailing=b"", item=2):
    if pointers is None:
        pointers = [0]
        for n in lengths[:-1]:
            pointers.append(pointers[-1] + n * item)
        pointers = pointers[:len(lengths)]
    if doc_idx is None:
        doc_idx = list(range(len(lengths) + 1))
    S = len(lengths) if S is None else S
    D = len(doc_idx) if D is None else D
    return (MAGIC + struct.pack("<Q", version) + struct.pack("<B", code) + struct.pack("<Q", S) +
            struct.pack("<Q", D) + np.asarray(lengths, "<i4").tobytes() + np.asarray(pointers, "<i8").tobytes() +
            np.asarray(doc_idx, "<i8").tobytes() + trailing)


def idx_seeds():
    t = "indexed_dataset"
    u16 = CODES["uint16"]
    put(t, "ok-uint16.idx", idx_bytes(u16, [5, 0, 7]))
    put(t, "ok-uint8.idx", idx_bytes(CODES["uint8"], [3, 4], item=1))
    put(t, "ok-int32-multidoc.idx", idx_bytes(CODES["int32"], [3, 4, 2], doc_idx=[0, 2, 3], item=4))
    put(t, "ok-int64.idx", idx_bytes(CODES["int64"], [2], item=8))
    put(t, "ok-no-sequences.idx", idx_bytes(u16, [], doc_idx=[0]))
    put(t, "ok-multimodal-modes.idx", idx_bytes(u16, [2, 3], trailing=b"\x00\x01"))
    put(t, "ok-fills-bin.idx", idx_bytes(u16, [32768]))
    put(t, "bad-float32.idx", idx_bytes(CODES["float32"], [2], item=4))  # open() accepts, read() refuses
    put(t, "bad-magic.idx", b"MMIDIDY\x00\x00" + idx_bytes(u16, [1])[9:])
    put(t, "bad-empty.idx", b"")
    put(t, "bad-truncated-header.idx", idx_bytes(u16, [1])[:20])
    put(t, "bad-version.idx", idx_bytes(u16, [1], version=2))
    put(t, "bad-dtype-0.idx", idx_bytes(0, [1]))
    put(t, "bad-dtype-9.idx", idx_bytes(9, [1]))
    put(t, "bad-huge-count.idx", idx_bytes(u16, [1], S=2**63))
    put(t, "bad-count-overflow.idx", idx_bytes(u16, [1], S=2**62 + 1, D=2**61))
    put(t, "bad-huge-doc-count.idx", idx_bytes(u16, [1], D=2**64 - 1))
    put(t, "bad-truncated-arrays.idx", idx_bytes(u16, [1, 2, 3])[:-5])
    put(t, "bad-trailing.idx", idx_bytes(u16, [1, 2], trailing=b"\x00\x00\x00"))
    put(t, "bad-negative-length.idx", idx_bytes(u16, [-3, 2], pointers=[0, 0]))
    put(t, "bad-pointer-gap.idx", idx_bytes(u16, [2, 2], pointers=[0, 6]))
    put(t, "bad-pointer-negative.idx", idx_bytes(u16, [2, 2], pointers=[-4, 0]))
    put(t, "bad-doc-start.idx", idx_bytes(u16, [2, 2], doc_idx=[1, 2]))
    put(t, "bad-doc-decreasing.idx", idx_bytes(u16, [2, 2, 2], doc_idx=[0, 2, 1, 3]))
    put(t, "bad-doc-end.idx", idx_bytes(u16, [2, 2], doc_idx=[0, 1]))
    put(t, "bad-doc-empty.idx", idx_bytes(u16, [], doc_idx=[]))
    put(t, "bad-past-bin.idx", idx_bytes(u16, [40000]))
    put(t, "bad-max-lengths.idx", idx_bytes(CODES["int64"], [2**31 - 1] * 4, item=8))


# ---------------------------------------------------------------- candidates.json
def candidates_seeds(cand_file):
    t = "candidates"
    good = json.loads(cand_file.read_text())
    put(t, "ok-search-output.json", cand_file.read_bytes())
    one = copy.deepcopy(good)
    one["candidates"] = one["candidates"][:1]
    one["candidates"][0]["measured"] = {"loss": 2.5, "accuracy": 0.25}
    put(t, "ok-measured.json", jtext(one))
    put(t, "ok-no-candidates.json", jtext({**good, "candidates": []}))

    def bad(name, mutate):
        c = copy.deepcopy(one)
        mutate(c)
        put(t, f"bad-{name}.json", jtext(c))

    c0 = lambda c: c["candidates"][0]
    bad("format", lambda c: c.update(format="minipuzzle-scores"))
    bad("format-not-string", lambda c: c.update(format=1))
    bad("version", lambda c: c.update(version=2))
    bad("version-string", lambda c: c.update(version="1"))
    bad("candidates-object", lambda c: c.update(candidates={}))
    bad("budget-string", lambda c: c.update(budget_bytes="1GiB"))
    bad("deployment-precision", lambda c: c["deployment"].update(weights="fp3"))
    bad("deployment-context", lambda c: c["deployment"].update(context=-1))
    huge = copy.deepcopy(one)  # accepted: the memory model works in doubles
    huge["deployment"].update(batch=2**63 - 1, context=2**63 - 1)
    put(t, "deployment-batch-huge.json", jtext(huge))
    bad("kept-out-of-range", lambda c: c0(c).update(kept_layers=[0, 1, 2, 99]))
    bad("kept-negative", lambda c: c0(c).update(kept_layers=[-1, 0, 1, 2]))
    bad("kept-unsorted", lambda c: c0(c).update(kept_layers=list(reversed(c0(c)["kept_layers"]))))
    bad("kept-count", lambda c: c0(c).update(kept_layers=c0(c)["kept_layers"][:-1]))
    bad("kept-not-array", lambda c: c0(c).update(kept_layers=3))
    bad("dropped-huge", lambda c: c0(c).update(dropped_layers=[2**63 - 1]))
    bad("config-invalid", lambda c: c0(c)["config"].update(hidden_size=-1))
    bad("config-huge", lambda c: c0(c)["config"].update(vocab_size=2**40))
    bad("params-float", lambda c: c0(c)["params"].update(total=1.5))
    bad("memory-missing", lambda c: c0(c).pop("memory"))
    bad("measured-string", lambda c: c0(c).update(measured={"loss": "low"}))
    bad("measured-array", lambda c: c0(c).update(measured=[1]))
    bad("why-number", lambda c: c0(c).update(why=3))
    bad("width-factors-missing", lambda c: c0(c).pop("width_factors"))
    put(t, "bad-not-object.json", "[]")
    put(t, "bad-empty.json", "")
    put(t, "bad-syntax.json", '{"format": "minipuzzle-candidates", ')
    put(t, "bad-deep-nesting.json", '{"format": "x", "y": ' + "[" * 10000 + "]" * 10000 + "}")


# ------------------------------------------------------------------- scores dir
def scores_seeds(scores_dir):
    t = "importance_scores"
    js = (scores_dir / "importance.json").read_bytes()
    st = (scores_dir / "importance.safetensors").read_bytes()
    put(t, "ok-score-output.bin", js + b"\0" + st)
    j = json.loads(js)
    from safetensors.numpy import load as st_load
    from safetensors import safe_open
    tensors = st_load(st)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(st)
        f.flush()
        with safe_open(f.name, "numpy") as s:
            meta = s.metadata()

    def make(name, jmut=None, tmut=None, mmut=None, raw_json=None):
        jj, tt, mm = copy.deepcopy(j), {k: v.copy() for k, v in tensors.items()}, dict(meta)
        if jmut:
            jmut(jj)
        if tmut:
            tmut(tt)
        if mmut:
            mmut(mm)
        text = raw_json if raw_json is not None else json.dumps(jj).encode()
        put(t, name, text + b"\0" + st_save(tt, metadata=mm))

    make("ok-only-mse.bin", tmut=lambda tt: [tt.pop(k) for k in ("layer.kl", "layer.loss", "layer.bi") if k in tt])
    make("bad-format.bin", jmut=lambda jj: jj.update(format="minipuzzle-candidates"))
    make("bad-format-not-string.bin", jmut=lambda jj: jj.update(format=5))
    make("bad-version.bin", jmut=lambda jj: jj.update(version=2))
    make("bad-version-string.bin", jmut=lambda jj: jj.update(version="1"))
    make("bad-hash-not-string.bin", jmut=lambda jj: jj.update(config_hash=12))
    make("bad-config-missing.bin", jmut=lambda jj: jj.pop("config"))
    make("bad-config-invalid.bin", jmut=lambda jj: jj["config"].update(hidden_size=0))
    make("bad-config-other-model.bin", jmut=lambda jj: jj["config"].update(intermediate_size=64))
    make("bad-hash-disagree.bin", mmut=lambda mm: mm.update(config_hash="0000000000000000"))
    make("bad-metadata-format.bin", mmut=lambda mm: mm.update(format="pt"))
    make("bad-wrong-length.bin", tmut=lambda tt: tt.update(hidden=np.ones(3, np.float32)))
    make("bad-nan.bin", tmut=lambda tt: tt.update(hidden=np.full_like(tt["hidden"], np.nan)))
    make("bad-2d.bin", tmut=lambda tt: tt.update(hidden=tt["hidden"].reshape(2, -1)))
    make("bad-f16.bin", tmut=lambda tt: tt.update(hidden=tt["hidden"].astype(np.float16)))
    make("bad-unknown-tensor.bin", tmut=lambda tt: tt.update(extra=np.ones(1, np.float32)))
    make("bad-no-layer-scores.bin", tmut=lambda tt: [tt.pop(k) for k in list(tt) if k.startswith("layer.")])
    make("bad-axis-on-wrong-layer.bin", tmut=lambda tt: tt.update({"layers.0.ffn": np.ones(32, np.float32)}))
    make("bad-json-syntax.bin", raw_json=b'{"format": ')
    make("bad-deep-nesting.bin", raw_json=b'{"format": "minipuzzle-importance", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}")
    put(t, "bad-no-safetensors.bin", js)
    put(t, "bad-truncated-safetensors.bin", js + b"\0" + st[: len(st) // 2])


def moe_scores_seeds(bin_path, tmp):
    """Scores of a tiny MoE model (transformers-built, tests/oracle/moe_tiny.py):
    the per-expert and per-neuron vectors of its E layers, whole and broken."""
    sys.path.insert(0, str(ROOT / "tests/oracle"))
    import moe_tiny as mt
    spec = mt.MoeSpec("fuzz_moe", seed=41, pattern="ME", experts=6, k=2, n_group=3, topk_group=2, expert_ffn=8,
                      shared_ffn=12, vocab=32, hidden=16)
    model_dir = mt.save_checkpoint(mt.build_model(spec), spec, tmp / "moe", "hub")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([bin_path, "score", str(model_dir), "--data", str(tmp / "data/corpus"), "--out",
                    str(tmp / "moe_scores"), "--samples", "4", "--seq-len", "32", "--layer-metrics", "mse"],
                   check=True, capture_output=True, env=env)
    t = "importance_scores"
    js = (tmp / "moe_scores/importance.json").read_bytes()
    st = (tmp / "moe_scores/importance.safetensors").read_bytes()
    put(t, "ok-moe-score-output.bin", js + b"\0" + st)
    from safetensors.numpy import load as st_load
    from safetensors import safe_open
    tensors = st_load(st)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(st)
        f.flush()
        with safe_open(f.name, "numpy") as s:
            meta = s.metadata()

    def make(name, tmut):
        tt = {k: v.copy() for k, v in tensors.items()}
        tmut(tt)
        put(t, name, js + b"\0" + st_save(tt, metadata=meta))

    make("bad-moe-experts-wrong-length.bin", lambda tt: tt.update({"layers.1.moe_experts": np.ones(4, np.float32)}))
    make("bad-moe-axis-on-mamba-layer.bin",
         lambda tt: tt.update({"layers.0.moe_expert_neurons": np.ones(8, np.float32)}))
    make("bad-moe-shared-nan.bin",
         lambda tt: tt.update({"layers.1.moe_shared_neurons": np.full(12, np.nan, np.float32)}))


# ------------------------------------------------------------- compress job
MINIMAL_JOB = """teacher: models/parent
out: runs/job
data:
  train: data/train
search:
  budget: 0.8MiB
short_distill:
  tokens: 200K
long_distill:
  tokens: 1e6
"""


def compress_job_seeds():
    """Input: the YAML text, then NUL-separated --set strings."""
    t = "compress_job"
    job = lambda yaml, *sets: (yaml + "".join("\0" + s for s in sets)).encode()
    put(t, "ok-minimal.yaml", job(MINIMAL_JOB))
    put(t, "ok-with-sets.yaml", job(MINIMAL_JOB, "search.axes.ffn=8192:16384:1024", "compute.device=cuda:1",
                                    "distill.global_batch=16", "distill.micro_batch=4", "rank.tokens=1.5M"))
    put(t, "ok-every-section.yaml", job(MINIMAL_JOB + """compute: {device: "cuda:1", dtype: bf16}
score: {samples: 64, seq_len: 256, batch: 8, seed: 7, aggregation: "seq=l2,batch=mean", layer_metrics: mse}
rank: {tokens: 1.5M, by: accuracy}
distill: {global_batch: 16, micro_batch: 4, loss: rkl, temperature: 2, activation_checkpointing: yes}
export: {dtype: fp8, max_shard_size: 2GiB}
evaluate: {tokens: 4M}
estimate: {tflops: 100}
"""))
    example = ROOT / "examples/paper-56b/job.yaml"
    if example.exists():
        put(t, "paper-56b.yaml", job(example.read_text(), "data.train=/data/train"))
    put(t, "bad-empty.yaml", b"")
    put(t, "bad-list.yaml", job("- a\n- b\n"))
    put(t, "bad-unclosed.yaml", job("teacher: [unclosed\n"))
    put(t, "bad-twice.yaml", job(MINIMAL_JOB + "teacher: again\n"))
    put(t, "bad-unknown-key.yaml", job(MINIMAL_JOB + "search_space: full\n"))
    put(t, "bad-not-integer.yaml", job(MINIMAL_JOB + "score: {samples: ten}\n"))
    put(t, "bad-huge-integer.yaml", job(MINIMAL_JOB + "score: {samples: 99999999999999999999999}\n"))
    put(t, "bad-huge-tokens.yaml", job(MINIMAL_JOB, "long_distill.tokens=18446744073709551615"))
    put(t, "bad-negative.yaml", job(MINIMAL_JOB + "search: {context: -1}\n"))
    put(t, "bad-nan.yaml", job(MINIMAL_JOB, "distill.temperature=.nan"))
    put(t, "bad-set-no-equals.yaml", job(MINIMAL_JOB, "budget"))
    put(t, "bad-axis.yaml", job(MINIMAL_JOB, "search.axes.ffm=1024"))
    put(t, "bad-batch-multiple.yaml", job(MINIMAL_JOB, "distill.global_batch=6", "distill.micro_batch=4"))
    put(t, "bad-deep-nesting.yaml", job("teacher: " + "[" * 5000 + "]" * 5000 + "\n"))
    put(t, "bad-deep-map.yaml", job(MINIMAL_JOB + "score:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(50))))
    put(t, "bad-anchors.yaml", job("a: &a [1, 2]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\n" + MINIMAL_JOB))
    put(t, "bad-tag.yaml", job(MINIMAL_JOB + "score: !!binary aGVsbG8=\n"))
    put(t, "bad-out-is-teacher.yaml", job(MINIMAL_JOB, "out=/jobs/fuzz/models/parent"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the minipuzzle CLI (for score and search)")
    a = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tiny = tmp / "tiny"
        subprocess.run([py, str(ROOT / "tools/make_tiny_model.py"), "--out", str(tiny), "--vocab", "32",
                        "--hidden", "16", "--pattern", "M*-M", "--ffn", "32", "--mamba-heads", "4",
                        "--mamba-head-dim", "4", "--state", "4", "--groups", "2", "--attn-heads", "2",
                        "--kv-heads", "1", "--head-dim", "8", "--chunk", "8"], check=True, capture_output=True)
        (tmp / "data").mkdir()
        rng = np.random.default_rng(0)
        docs = [rng.integers(0, 32, size=n).astype("<u2") for n in (300, 500, 400)]
        (tmp / "data/corpus.bin").write_bytes(b"".join(d.tobytes() for d in docs))
        (tmp / "data/corpus.idx").write_bytes(idx_bytes(CODES["uint16"], [len(d) for d in docs]))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([a.bin, "score", str(tiny), "--data", str(tmp / "data/corpus"), "--out", str(tmp / "scores"),
                        "--samples", "4", "--seq-len", "32"], check=True, capture_output=True, env=env)
        subprocess.run([a.bin, "search", str(tiny), "--scores", str(tmp / "scores"), "--budget", "1MiB",
                        "--precision", "bf16", "--context", "64", "--space", "depth", "--top-k", "2",
                        "--out", str(tmp / "candidates.json")], check=True, capture_output=True, env=env)
        for d in CORPUS.glob("*"):
            for f in list(d.glob("ok-*")) + list(d.glob("bad-*")):
                f.unlink()
        safetensors_seeds(tiny)
        index_seeds()
        config_seeds(tiny)
        idx_seeds()
        candidates_seeds(tmp / "candidates.json")
        scores_seeds(tmp / "scores")
        moe_scores_seeds(a.bin, tmp)
        compress_job_seeds()
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"corpus: {sum(1 for f in CORPUS.rglob('*') if f.is_file())} files, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
