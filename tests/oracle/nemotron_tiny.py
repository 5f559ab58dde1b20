"""Tiny random Nemotron-H models made with HF transformers: the oracle's fixtures.

Everything here is plain HF / safetensors / numpy code; nothing of ours is
imported, so these fixtures check our binary against code no one here wrote.

* ``TinySpec`` / ``SPECS``: small architectures covering the three layer types
  (M = Mamba2, * = attention, - = MLP), n_groups 1 and > 1, different state
  sizes, head dims and chunk sizes.
* ``build_model(spec)``: ``NemotronHForCausalLM`` in fp32 with *every*
  parameter randomised from ``spec.seed`` (HF init leaves D = 1, norms = 1,
  conv bias = 0, A_log = log(1..H), ...; those would hide bugs).
* ``save_checkpoint(model, dir, style)``: writes the model in one of the
  checkpoint styles a user can hold (see ``STYLES``).
* ``hf_logits(model, ids)``: HF fp32 logits.
* ``run_cli(...)``: runs ``$MINIPUZZLE_BIN``.
* ``read_indexed_dataset(prefix)``: our own small Megatron .bin/.idx reader.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from transformers import NemotronHConfig, NemotronHForCausalLM

PATTERN_TO_TYPE = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}


@dataclasses.dataclass(frozen=True)
class TinySpec:
    name: str
    seed: int
    vocab: int
    hidden: int
    pattern: str
    attn_heads: int
    kv_heads: int
    attn_head_dim: int  # independent of hidden / heads on purpose
    ffn: int
    mamba_heads: int
    mamba_head_dim: int
    state: int
    groups: int
    chunk: int
    conv_kernel: int = 4
    time_step_min: float = 0.001  # HF clamps dt below at this (not at time_step_limit[0])
    eps: float = 1e-5

    @property
    def layer_types(self) -> list[str]:
        return [PATTERN_TO_TYPE[c] for c in self.pattern]


# Four architectures for the parity tests. Sequence lengths used with each
# are in the tests (not multiples of `chunk`, several chunks long).
SPECS = [
    # all three types, n_groups 1, attention head_dim != hidden/heads
    TinySpec("m_a_f_g1", seed=11, vocab=300, hidden=48, pattern="M*-M-",
             attn_heads=4, kv_heads=2, attn_head_dim=16, ffn=96,
             mamba_heads=4, mamba_head_dim=8, state=16, groups=1, chunk=8),
    # n_groups 2, bigger state, MHA (kv == heads), a larger time_step_min so
    # the dt clamp is exercised
    TinySpec("g2_state32", seed=12, vocab=320, hidden=64, pattern="M-*M-M",
             attn_heads=2, kv_heads=2, attn_head_dim=24, ffn=128,
             mamba_heads=6, mamba_head_dim=12, state=32, groups=2, chunk=16,
             time_step_min=0.05),
    # n_groups 4 with 8 heads (2 heads per group), small state, GQA 6/2
    TinySpec("g4_gqa", seed=13, vocab=512, hidden=96, pattern="*MM-*-M",
             attn_heads=6, kv_heads=2, attn_head_dim=8, ffn=64,
             mamba_heads=8, mamba_head_dim=4, state=8, groups=4, chunk=32,
             time_step_min=0.01),
    # Mamba + MLP only (no attention), n_groups == mamba heads, odd sizes
    TinySpec("mamba_mlp_g3", seed=14, vocab=333, hidden=40, pattern="MM-M-",
             attn_heads=2, kv_heads=1, attn_head_dim=20, ffn=72,
             mamba_heads=3, mamba_head_dim=16, state=12, groups=3, chunk=4,
             time_step_min=0.02),
]
SPECS_BY_NAME = {s.name: s for s in SPECS}


def make_config(spec: TinySpec) -> NemotronHConfig:
    return NemotronHConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        layers_block_type=spec.layer_types,
        num_attention_heads=spec.attn_heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.attn_head_dim,
        intermediate_size=spec.ffn,
        mamba_num_heads=spec.mamba_heads,
        mamba_head_dim=spec.mamba_head_dim,
        ssm_state_size=spec.state,
        n_groups=spec.groups,
        chunk_size=spec.chunk,
        conv_kernel=spec.conv_kernel,
        time_step_min=spec.time_step_min,
        layer_norm_epsilon=spec.eps,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        use_cache=False,
    )


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Deterministically overwrite every parameter (names as in named_parameters)."""
    g = torch.Generator().manual_seed(seed)

    def uni(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    for name, p in sorted(model.named_parameters()):
        shape = p.shape
        if name.endswith("A_log"):
            # A = -exp(A_log) in [-e^2, -e^-1]: mix of fast and slow decay
            v = uni(shape, -1.0, 2.0)
        elif name.endswith(".D"):
            v = uni(shape, -1.0, 2.0)
        elif name.endswith("dt_bias"):
            # softplus(dt_bias + dt) spans the clamp at time_step_min and large steps
            v = uni(shape, -6.0, 1.5)
        elif name.endswith("conv1d.bias"):
            v = uni(shape, -0.5, 0.5)
        elif name.endswith("conv1d.weight"):  # [C, 1, K]
            v = torch.randn(shape, generator=g) * (1.0 / math.sqrt(shape[-1]))
        elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            v = uni(shape, 0.5, 1.5)
        elif name.endswith("embeddings.weight"):
            v = torch.randn(shape, generator=g)
        elif p.ndim == 2:  # Linear [out, in]: O(1) activations, meaningful logits
            v = torch.randn(shape, generator=g) * (1.0 / math.sqrt(shape[1]))
        elif p.ndim == 1:  # any bias
            v = uni(shape, -0.1, 0.1)
        else:
            raise AssertionError(f"unexpected parameter {name} {tuple(shape)}")
        p.copy_(v.to(p.dtype))


def build_model(spec: TinySpec) -> NemotronHForCausalLM:
    torch.manual_seed(spec.seed)
    model = NemotronHForCausalLM(make_config(spec)).to(torch.float32).eval()
    randomize_(model, spec.seed)
    return model


@torch.no_grad()
def hf_logits(model: NemotronHForCausalLM, ids) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if ids.ndim == 1:
        ids = ids[None]
    return model(input_ids=ids, use_cache=False).logits.float()


def random_tokens(vocab: int, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g, dtype=torch.long)


# ----------------------------------------------------------------------------
# checkpoint styles
# ----------------------------------------------------------------------------

#  tf5          HF save_pretrained: backbone.* names (5.17 renames model.->backbone.
#               on save), config with layers_block_type list, no
#               num_hidden_layers, time_step_limit [0.0, {"__float__": "Infinity"}]
#  tf5_sharded  same, save_pretrained(max_shard_size=...) -> shards + index
#  hub          what nvidia/* repos hold: backbone.* names, config with
#               hybrid_override_pattern + num_hidden_layers, written by us
#  model_prefix in-memory state_dict names (model.*), layers_block_type config
STYLES = ["tf5", "tf5_sharded", "hub", "model_prefix"]


def hub_config_dict(spec: TinySpec, dtype: str = "float32") -> dict:
    """Hub-style config.json, shaped like nvidia/Nemotron-H-8B-Base-8K's."""
    return {
        "architectures": ["NemotronHForCausalLM"],
        "model_type": "nemotron_h",
        "vocab_size": spec.vocab,
        "hidden_size": spec.hidden,
        "num_hidden_layers": len(spec.pattern),
        "hybrid_override_pattern": spec.pattern,
        "intermediate_size": spec.ffn,
        "mlp_hidden_act": "relu2",
        "mlp_bias": False,
        "num_attention_heads": spec.attn_heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.attn_head_dim,
        "attention_head_dim": spec.attn_head_dim,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mamba_num_heads": spec.mamba_heads,
        "mamba_head_dim": spec.mamba_head_dim,
        "ssm_state_size": spec.state,
        "n_groups": spec.groups,
        "conv_kernel": spec.conv_kernel,
        "expand": 2,
        "chunk_size": spec.chunk,
        "use_conv_bias": True,
        "mamba_proj_bias": False,
        "mamba_hidden_act": "silu",
        "time_step_min": spec.time_step_min,
        "time_step_max": 0.1,
        "time_step_floor": 0.0001,
        "layer_norm_epsilon": spec.eps,
        "residual_in_fp32": False,
        "rescale_prenorm_residual": True,
        "tie_word_embeddings": False,
        "use_bias": False,
        "torch_dtype": dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "max_position_embeddings": 4096,
    }


def hub_state_dict(model: NemotronHForCausalLM) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model."):
            k = "backbone." + k[len("model."):]
        out[k] = v.detach().contiguous().clone()
    return out


def save_checkpoint(model: NemotronHForCausalLM, spec: TinySpec, out_dir, style: str) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if style == "tf5":
        model.save_pretrained(out_dir)
    elif style == "tf5_sharded":
        # several shards: largest tensor (embeddings / lm_head) gets its own
        largest = max(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(out_dir, max_shard_size=f"{largest // 1000 + 1}KB")
        assert (out_dir / "model.safetensors.index.json").exists()
    elif style == "hub":
        save_file(hub_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        (out_dir / "config.json").write_text(json.dumps(hub_config_dict(spec), indent=2))
    elif style == "model_prefix":
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        cfg = hub_config_dict(spec)
        del cfg["hybrid_override_pattern"], cfg["num_hidden_layers"]
        cfg["layers_block_type"] = spec.layer_types
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    else:
        raise ValueError(style)
    return out_dir


def load_hf(path, dtype=torch.float32) -> NemotronHForCausalLM:
    return NemotronHForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


# ----------------------------------------------------------------------------
# the binary
# ----------------------------------------------------------------------------

def minipuzzle_bin() -> str:
    b = os.environ.get("MINIPUZZLE_BIN")
    if not b:
        src = Path(__file__).resolve().parents[2]
        b = str(src / "build" / "bin" / "minipuzzle")
    assert Path(b).is_file() and os.access(b, os.X_OK), (
        f"minipuzzle binary not found at {b} (set MINIPUZZLE_BIN or build first)")
    return b


def run_cli(*args, check=True, timeout=300) -> subprocess.CompletedProcess:
    cmd = [minipuzzle_bin(), *[str(a) for a in args]]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(
            f"command failed (rc={r.returncode}): {' '.join(cmd)}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}")
    return r


def cli_logits(ckpt_dir, ids: torch.Tensor, work_dir, dtype="fp32", device="cpu", tag="t") -> torch.Tensor:
    from safetensors.torch import load_file
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tok = work_dir / f"tokens_{tag}.safetensors"
    out = work_dir / f"logits_{tag}_{dtype}_{device}.safetensors"
    if out.exists():
        out.unlink()
    save_file({"input_ids": ids.to(torch.int64).contiguous()}, str(tok))
    run_cli("logits", ckpt_dir, "--tokens", tok, "--out", out, "--dtype", dtype, "--device", device)
    t = load_file(str(out))
    assert set(t) >= {"logits"}, f"{out}: tensors {sorted(t)}"
    lg = t["logits"]
    assert lg.dtype == torch.float32, lg.dtype
    return lg


# ----------------------------------------------------------------------------
# Megatron indexed dataset (.bin/.idx, MMIDIDX v1) reader, independent of ours
# ----------------------------------------------------------------------------

_MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                    6: np.float64, 7: np.float32, 8: np.uint16}


def read_indexed_dataset(prefix) -> list[np.ndarray]:
    """Returns the list of sequences (as int64 arrays) of PREFIX.bin/.idx."""
    prefix = str(prefix)
    idx = Path(prefix + ".idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00", idx[:9]
    (version,) = struct.unpack_from("<Q", idx, 9)
    assert version == 1, version
    (code,) = struct.unpack_from("<B", idx, 17)
    dtype = np.dtype(_MEGATRON_DTYPES[code]).newbyteorder("<")
    seq_count, doc_count = struct.unpack_from("<QQ", idx, 18)
    off = 34
    sizes = np.frombuffer(idx, dtype="<i4", count=seq_count, offset=off).copy()
    off += 4 * seq_count
    pointers = np.frombuffer(idx, dtype="<i8", count=seq_count, offset=off).copy()
    off += 8 * seq_count
    doc_idx = np.frombuffer(idx, dtype="<i8", count=doc_count, offset=off).copy()
    off += 8 * doc_count
    assert off == len(idx), f"idx has {len(idx) - off} trailing bytes"
    assert doc_idx[0] == 0 and doc_idx[-1] == seq_count, doc_idx
    data = Path(prefix + ".bin").read_bytes()
    seqs = []
    for s, p in zip(sizes, pointers):
        assert p + s * dtype.itemsize <= len(data)
        seqs.append(np.frombuffer(data, dtype=dtype, count=int(s), offset=int(p)).astype(np.int64))
    if seq_count:
        assert pointers[0] == 0
        assert np.all(pointers[1:] == pointers[:-1] + sizes[:-1].astype(np.int64) * dtype.itemsize)
        assert int(pointers[-1]) + int(sizes[-1]) * dtype.itemsize == len(data)
    return seqs


# ----------------------------------------------------------------------------
# safetensors file checks done byte-wise (beyond what safe_open checks)
# ----------------------------------------------------------------------------

def safetensors_header(path) -> tuple[int, dict]:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    return n, json.loads(raw[8:8 + n].decode("utf-8"))


def checkpoint_cache(models: dict, root: Path):
    """get(spec_name, style="hub") -> checkpoint directory of models[spec_name]
    in that style, written under `root` on first use and reused after."""
    cache = {}

    def get(name, style="hub"):
        if (name, style) not in cache:
            cache[(name, style)] = save_checkpoint(models[name], SPECS_BY_NAME[name], Path(root) / name / style, style)
        return cache[(name, style)]

    return get
