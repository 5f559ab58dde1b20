"""`minipuzzle prune` writes pruned checkpoints that HF transformers loads, with
the weights an independent slicer predicts and the function pruning defines.

For random tiny Nemotron-H models (made and saved by HF transformers) and
hand-written importance scores (integer-valued, so ties are common):

* every pruning axis alone (hidden channels, FFN neurons, attention heads,
  Mamba heads, Mamba head channels, layers by index, layers by score) and
  all together, via `--set` and via `--candidate candidates.json#RANK`;
* the pruned directory loads with `NemotronHForCausalLM.from_pretrained`
  with no missing, unexpected or mismatched tensors, and its tensors equal
  the parent's HF weights sliced by the reference slicer below (bit-exact in
  fp32; top-k per group, ties to the lower index);
* our logits for it (`minipuzzle logits`) match HF's within 1e-4;
* with layer_norm_epsilon ~ 0, HF's pruned model equals HF's *parent* with
  the pruned units masked out (zeroed rows/columns, RMSNorm weights rescaled
  by sqrt(n_new / n_old) for the norms that average over fewer channels);
* user errors exit 2 with one line and write nothing.

The scores files are written here in the format of
include/minipuzzle/importance_scores.h; `config_hash` mirrors
config_fingerprint() in pruning/importance_scores.cpp (FNV-1a 64 of the
compact, key-sorted architecture JSON plus a NUL); weights_hash is left empty
(the loader then skips the weights check).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nemotron_tiny as nt

# ----------------------------------------------------------------------------
# scores files
# ----------------------------------------------------------------------------


def config_hash(spec: nt.TinySpec) -> str:
    arch = {"vocab_size": spec.vocab, "hidden_size": spec.hidden, "pattern": spec.pattern,
            "intermediate_size": spec.ffn, "num_attention_heads": spec.attn_heads,
            "num_key_value_heads": spec.kv_heads, "head_dim": spec.attn_head_dim,
            "mamba_num_heads": spec.mamba_heads, "mamba_head_dim": spec.mamba_head_dim,
            "ssm_state_size": spec.state, "n_groups": spec.groups, "conv_kernel": spec.conv_kernel}
    h = 1469598103934665603
    for b in json.dumps(arch, sort_keys=True, separators=(",", ":")).encode() + b"\0":
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def make_scores(spec: nt.TinySpec, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(n):  # small integers: many ties
        return torch.randint(0, 5, (n,), generator=g).float()

    t = {"layer.mse": torch.rand(len(spec.pattern), generator=g), "layer.bi": rnd(len(spec.pattern)),
         "hidden": rnd(spec.hidden)}
    for i, c in enumerate(spec.pattern):
        if c == "-":
            t[f"layers.{i}.ffn"] = rnd(spec.ffn)
        elif c == "*":
            t[f"layers.{i}.attention_heads"] = rnd(spec.attn_heads)
        else:
            t[f"layers.{i}.mamba_channels"] = rnd(spec.mamba_heads * spec.mamba_head_dim)
            t[f"layers.{i}.mamba_heads"] = rnd(spec.mamba_heads)
            t[f"layers.{i}.mamba_head_channels"] = rnd(spec.mamba_head_dim)
    return t


def write_scores(spec: nt.TinySpec, scores: dict[str, torch.Tensor], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    h = config_hash(spec)
    save_file(scores, str(out / "importance.safetensors"),
              metadata={"format": "minipuzzle-importance", "config_hash": h, "weights_hash": ""})
    (out / "importance.json").write_text(json.dumps({
        "format": "minipuzzle-importance", "version": 1, "config_hash": h, "weights_hash": "",
        "primary_layer_metric": "mse", "measured": {}, "config": nt.hub_config_dict(spec)}, indent=2))
    return out


# ----------------------------------------------------------------------------
# the reference plan and slicer (independent of the C++ code)
# ----------------------------------------------------------------------------


def top_k(scores: torch.Tensor, k: int, groups: int = 1) -> list[int]:
    s = scores.tolist()
    n = len(s)
    per, keep = n // groups, k // groups
    out = []
    for g in range(groups):
        idx = sorted(range(g * per, (g + 1) * per), key=lambda i: (-s[i], i))
        out += sorted(idx[:keep])
    return out


@dataclasses.dataclass
class Plan:
    layers: list[int]
    hidden: list[int]
    ffn: int
    heads: int
    mamba_heads: int
    mamba_dim: int
    units: dict  # (layer, axis) -> kept indices


def reference_plan(spec, scores, *, layers=None, hidden=None, ffn=None, heads=None, mamba_heads=None,
                   mamba_dim=None, drop=(), keep=None) -> Plan:
    n = len(spec.pattern)
    if layers is None:
        mse = scores["layer.mse"].tolist()
        cand = [i for i in range(n) if i not in set(drop)]
        layers = []
        for ch in "M*-":
            of = [i for i in cand if spec.pattern[i] == ch]
            k = (keep or {}).get(ch, len(of))
            layers += sorted(sorted(of, key=lambda i: (-mse[i], i))[:k])
        layers.sort()
    p = Plan(layers=layers, hidden=top_k(scores["hidden"], hidden or spec.hidden), ffn=ffn or spec.ffn,
             heads=heads or spec.attn_heads, mamba_heads=mamba_heads or spec.mamba_heads,
             mamba_dim=mamba_dim or spec.mamba_head_dim, units={})
    for i in layers:
        c = spec.pattern[i]
        if c == "-":
            p.units[i, "ffn"] = top_k(scores[f"layers.{i}.ffn"], p.ffn)
        elif c == "*":
            p.units[i, "heads"] = top_k(scores[f"layers.{i}.attention_heads"], p.heads, spec.kv_heads)
        else:
            p.units[i, "mheads"] = top_k(scores[f"layers.{i}.mamba_heads"], p.mamba_heads, spec.groups)
            p.units[i, "mdims"] = top_k(scores[f"layers.{i}.mamba_head_channels"], p.mamba_dim)
    return p


def ix(v):
    return torch.tensor(v, dtype=torch.long)


def mamba_channels(p: Plan, i: int, P: int) -> list[int]:
    return [h * P + d for h in p.units[i, "mheads"] for d in p.units[i, "mdims"]]


def reference_slice(spec, parent_sd: dict[str, torch.Tensor], p: Plan) -> dict[str, torch.Tensor]:
    """Hub-named tensors of the pruned model, sliced from the parent's."""
    hid = ix(p.hidden)
    out = {"backbone.embeddings.weight": parent_sd["backbone.embeddings.weight"][:, hid],
           "backbone.norm_f.weight": parent_sd["backbone.norm_f.weight"][hid],
           "lm_head.weight": parent_sd["lm_head.weight"][:, hid]}
    for j, i in enumerate(p.layers):
        src = lambda name: parent_sd[f"backbone.layers.{i}.{name}"]  # noqa: E731
        dst = f"backbone.layers.{j}."
        out[dst + "norm.weight"] = src("norm.weight")[hid]
        c = spec.pattern[i]
        if c == "-":
            f = ix(p.units[i, "ffn"])
            out[dst + "mixer.up_proj.weight"] = src("mixer.up_proj.weight")[f][:, hid]
            out[dst + "mixer.down_proj.weight"] = src("mixer.down_proj.weight")[hid][:, f]
        elif c == "*":
            q = ix([h * spec.attn_head_dim + d for h in p.units[i, "heads"] for d in range(spec.attn_head_dim)])
            out[dst + "mixer.q_proj.weight"] = src("mixer.q_proj.weight")[q][:, hid]
            out[dst + "mixer.k_proj.weight"] = src("mixer.k_proj.weight")[:, hid]
            out[dst + "mixer.v_proj.weight"] = src("mixer.v_proj.weight")[:, hid]
            out[dst + "mixer.o_proj.weight"] = src("mixer.o_proj.weight")[hid][:, q]
        else:
            di = spec.mamba_heads * spec.mamba_head_dim
            gn2 = 2 * spec.groups * spec.state
            ch = mamba_channels(p, i, spec.mamba_head_dim)
            heads = p.units[i, "mheads"]
            w = src("mixer.in_proj.weight")
            z, x, bc, dt = w[:di], w[di:2 * di], w[2 * di:2 * di + gn2], w[2 * di + gn2:]
            out[dst + "mixer.in_proj.weight"] = torch.cat([z[ix(ch)], x[ix(ch)], bc, dt[ix(heads)]])[:, hid]
            for name in ("conv1d.weight", "conv1d.bias"):
                t = src("mixer." + name)
                out[dst + "mixer." + name] = torch.cat([t[:di][ix(ch)], t[di:]])
            for name in ("A_log", "D", "dt_bias"):
                out[dst + "mixer." + name] = src("mixer." + name)[ix(heads)]
            out[dst + "mixer.norm.weight"] = src("mixer.norm.weight")[ix(ch)]
            out[dst + "mixer.out_proj.weight"] = src("mixer.out_proj.weight")[hid][:, ix(ch)]
    return out


@torch.no_grad()
def masked_parent(model, spec, p: Plan):
    """HF parent with everything the plan prunes masked out (exact when eps ~ 0)."""
    m = copy.deepcopy(model)
    sd = dict(m.named_parameters())
    drop_h = ix([c for c in range(spec.hidden) if c not in set(p.hidden)])
    sh = math.sqrt(len(p.hidden) / spec.hidden)
    sd["model.embeddings.weight"][:, drop_h] = 0
    sd["model.norm_f.weight"].mul_(sh)
    for i, c in enumerate(spec.pattern):
        w = lambda name: sd[f"model.layers.{i}.{name}"]  # noqa: E731
        w("norm.weight").mul_(sh)
        out_name = {"-": "mixer.down_proj.weight", "*": "mixer.o_proj.weight", "M": "mixer.out_proj.weight"}[c]
        if i not in p.layers:
            w(out_name).zero_()  # the block becomes the identity
            continue
        w(out_name)[drop_h] = 0  # the residual stream keeps zeros in dropped channels
        if c == "-":
            w("mixer.up_proj.weight")[ix([f for f in range(spec.ffn) if f not in p.units[i, "ffn"]])] = 0
        elif c == "*":
            cols = [h * spec.attn_head_dim + d for h in range(spec.attn_heads) if h not in p.units[i, "heads"]
                    for d in range(spec.attn_head_dim)]
            w("mixer.o_proj.weight")[:, ix(cols)] = 0
        else:
            di = spec.mamba_heads * spec.mamba_head_dim
            kept = set(mamba_channels(p, i, spec.mamba_head_dim))
            w("mixer.in_proj.weight")[ix([ch for ch in range(di) if ch not in kept])] = 0  # z rows: gate off
            w("mixer.norm.weight").mul_(math.sqrt(len(kept) / di))
    return m


# ----------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------

NAMES = ("m_a_f_g1", "g4_gqa", "g2_state32", "mamba_mlp_g3")
# eps ~ 0 twins of two specs, for the masked-parent equivalence
EPS0 = {n + "_eps0": dataclasses.replace(nt.SPECS_BY_NAME[n], name=n + "_eps0", eps=1e-12)
        for n in ("m_a_f_g1", "g4_gqa")}


def spec_of(name):
    return EPS0[name] if name in EPS0 else nt.SPECS_BY_NAME[name]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    models, dirs, scores, score_dirs = {}, {}, {}, {}
    for name in (*NAMES, *EPS0):
        spec = spec_of(name)
        models[name] = nt.build_model(spec)
        dirs[name] = nt.save_checkpoint(models[name], spec, root / "ckpt" / name, "hub")
        scores[name] = make_scores(spec, seed=len(name))
        score_dirs[name] = write_scores(spec, scores[name], root / "scores" / name)
    return dict(root=root, models=models, dirs=dirs, scores=scores, score_dirs=score_dirs)


def prune(env, name, out, *args, dtype="fp32"):
    r = nt.run_cli("prune", env["dirs"][name], "--scores", env["score_dirs"][name], "--out", out,
                   *(["--dtype", dtype] if dtype else []), *args)
    assert "pruned" in r.stdout, r.stdout
    return out


def check_pruned(env, name, out: Path, p: Plan, work: Path, dtype=torch.float32):
    spec = spec_of(name)
    # config.json: the target architecture
    cfg = json.loads((out / "config.json").read_text())
    pattern = "".join(spec.pattern[i] for i in p.layers)
    want = {"hybrid_override_pattern": pattern, "num_hidden_layers": len(pattern), "hidden_size": len(p.hidden),
            "intermediate_size": p.ffn, "num_attention_heads": p.heads, "num_key_value_heads": spec.kv_heads,
            "head_dim": spec.attn_head_dim, "mamba_num_heads": p.mamba_heads, "mamba_head_dim": p.mamba_dim,
            "ssm_state_size": spec.state, "n_groups": spec.groups, "vocab_size": spec.vocab,
            "layer_norm_epsilon": spec.eps, "eos_token_id": 2}
    for k, v in want.items():
        assert cfg.get(k) == v, f"config.json {k} = {cfg.get(k)}, want {v}"
    # tensors: the reference slice, exactly
    got = load_file(str(out / "model.safetensors"))
    ref = reference_slice(spec, nt.hub_state_dict(env["models"][name]), p)
    assert set(got) == set(ref), sorted(set(got) ^ set(ref))
    for k, v in ref.items():
        assert got[k].dtype == dtype, (k, got[k].dtype)
        assert got[k].shape == v.shape, (k, tuple(got[k].shape), tuple(v.shape))
        assert torch.equal(got[k], v.to(dtype)), f"{k}: values differ from the reference slice"
    # HF loads it whole and agrees with our forward
    hf, info = nt.NemotronHForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    hf.eval()
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(key), f"{key}: {info.get(key)}"
    ids = nt.random_tokens(spec.vocab, 2, 23, seed=len(p.layers) + len(p.hidden))
    hf_out = nt.hf_logits(hf, ids)
    ours = nt.cli_logits(out, ids, work)
    err = (ours - hf_out).abs().max().item()
    assert err < 1e-4, err
    return hf, ids, hf_out


# (spec, --set arguments, reference plan keywords)
SET_CASES = [
    ("m_a_f_g1", ["hidden_size=32"], dict(hidden=32)),
    ("m_a_f_g1", ["intermediate_size=40"], dict(ffn=40)),
    ("m_a_f_g1", ["num_attention_heads=2"], dict(heads=2)),
    ("m_a_f_g1", ["mamba_num_heads=2"], dict(mamba_heads=2)),
    ("m_a_f_g1", ["mamba_head_dim=5"], dict(mamba_dim=5)),
    ("m_a_f_g1", ["drop_layers=1,3"], dict(drop=(1, 3))),
    ("m_a_f_g1", ["keep_mamba=1", "keep_mlp=1"], dict(keep={"M": 1, "-": 1})),
    # g4_gqa alone only where its structure differs (heads per KV group,
    # Mamba heads per group of 4); its hidden, FFN and head-dim slicing is
    # m_a_f_g1's, and test_prune_all_axes_equals_masked_parent cuts them all
    # on its eps0 twin.
    ("g4_gqa", ["num_attention_heads=4"], dict(heads=4)),
    ("g4_gqa", ["mamba_num_heads=4"], dict(mamba_heads=4)),
    ("g4_gqa", ["keep_attention=1", "drop_layers=6"], dict(keep={"*": 1}, drop=(6,))),
    # MHA (2 heads on 2 kv heads): attention heads cannot be narrowed
    ("g2_state32", ["hidden_size=40", "intermediate_size=100", "mamba_num_heads=4", "mamba_head_dim=7",
                    "keep_mamba=2"], dict(hidden=40, ffn=100, mamba_heads=4, mamba_dim=7, keep={"M": 2})),
    ("mamba_mlp_g3", ["hidden_size=24", "intermediate_size=50", "mamba_head_dim=10", "drop_layers=0"],
     dict(hidden=24, ffn=50, mamba_dim=10, drop=(0,))),
]


@pytest.mark.parametrize("name,sets,kw", SET_CASES, ids=[f"{n}-{'-'.join(s)}" for n, s, _ in SET_CASES])
def test_prune_set(env, tmp_path, name, sets, kw):
    spec = spec_of(name)
    args = [a for s in sets for a in ("--set", s)]
    out = prune(env, name, tmp_path / "out", *args)
    p = reference_plan(spec, env["scores"][name], **kw)
    check_pruned(env, name, out, p, tmp_path / "work")


@pytest.mark.parametrize("name", list(EPS0))
def test_prune_all_axes_equals_masked_parent(env, tmp_path, name):
    """eps ~ 0: HF on the pruned checkpoint == HF on the masked parent."""
    spec = spec_of(name)
    kw = {"m_a_f_g1_eps0": dict(hidden=30, ffn=50, heads=2, mamba_heads=2, mamba_dim=6, drop=(3,)),
          "g4_gqa_eps0": dict(hidden=60, ffn=40, heads=2, mamba_heads=4, mamba_dim=3, keep={"-": 1})}[name]
    sets = {"hidden": "hidden_size", "ffn": "intermediate_size", "heads": "num_attention_heads",
            "mamba_heads": "mamba_num_heads", "mamba_dim": "mamba_head_dim"}
    args = [a for k, v in kw.items() if k in sets for a in ("--set", f"{sets[k]}={v}")]
    if "drop" in kw:
        args += ["--set", "drop_layers=" + ",".join(map(str, kw["drop"]))]
    if "keep" in kw:
        args += ["--set", "keep_mlp=1"]
    out = prune(env, name, tmp_path / "out", *args)
    p = reference_plan(spec, env["scores"][name], **kw)
    _, ids, pruned_logits = check_pruned(env, name, out, p, tmp_path / "work")
    masked = nt.hf_logits(masked_parent(env["models"][name], spec, p), ids)
    full = nt.hf_logits(env["models"][name], ids)
    err = (pruned_logits - masked).abs().max().item()
    assert err < 1e-4, err
    assert (pruned_logits - full).abs().max().item() > 1e-2, "pruning changed nothing: the check would be vacuous"


def candidate_entry(spec, rank, kept, **widths):
    cfg = nt.hub_config_dict(spec)
    pattern = "".join(spec.pattern[i] for i in kept)
    cfg.update(hybrid_override_pattern=pattern, num_hidden_layers=len(pattern), **widths)
    zero_params = {"total": 0, "embeddings": 0, "lm_head": 0, "final_norm": 0,
                   "per_layer": {"mamba": 0, "attention": 0, "mlp": 0}, "by_type": {"mamba": 0, "attention": 0, "mlp": 0}}
    zero_mem = {"weights_bytes": 0, "kv_cache_bytes": 0, "mamba_ssm_bytes": 0, "mamba_conv_bytes": 0,
                "workspace_bytes": 0, "total_bytes": 0, "total_gib": 0}
    return {"rank": rank, "proxy_score": 1.0 / rank, "layer_importance_kept": 1.0,
            "width_factors": {"mamba": 1, "attention": 1, "mlp": 1}, "why": "test", "config": cfg,
            "kept_layers": kept, "dropped_layers": [i for i in range(len(spec.pattern)) if i not in kept],
            "params": zero_params, "memory": zero_mem}


def test_prune_candidate(env, tmp_path):
    name = "g4_gqa"  # *MM-*-M
    spec = spec_of(name)
    doc = {"format": "minipuzzle-candidates", "version": 1, "budget_bytes": 1e9, "budget_gib": 1e9 / 2**30,
           "deployment": {"weights": "bf16", "kv_cache": "bf16", "state": "bf16", "context": 1024, "batch": 1,
                          "workspace_bytes": 0},
           "evaluated": 2, "feasible": 2, "min_memory_bytes": 0,
           "candidates": [candidate_entry(spec, 1, [0, 1, 3, 4, 6], hidden_size=80, intermediate_size=32,
                                          mamba_num_heads=4),
                          candidate_entry(spec, 2, [1, 2, 5], num_attention_heads=2, mamba_head_dim=2)]}
    cand = tmp_path / "candidates.json"
    cand.write_text(json.dumps(doc, indent=2))
    out1 = prune(env, name, tmp_path / "c1", "--candidate", cand, dtype=None)  # rank 1 by default
    check_pruned(env, name, out1, reference_plan(spec, env["scores"][name], layers=[0, 1, 3, 4, 6], hidden=80,
                                                 ffn=32, mamba_heads=4), tmp_path / "w1")
    out2 = prune(env, name, tmp_path / "c2", "--candidate", f"{cand}#2", dtype=None)
    check_pruned(env, name, out2, reference_plan(spec, env["scores"][name], layers=[1, 2, 5], heads=2, mamba_dim=2),
                 tmp_path / "w2")
    r = nt.run_cli("prune", env["dirs"][name], "--scores", env["score_dirs"][name], "--candidate", f"{cand}#3",
                   "--out", tmp_path / "c3", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert not (tmp_path / "c3").exists()


def test_prune_bf16_output(env, tmp_path):
    name = "m_a_f_g1"
    spec = spec_of(name)
    out = prune(env, name, tmp_path / "out", "--set", "hidden_size=40", "--set", "mamba_num_heads=2", dtype="bf16")
    p = reference_plan(spec, env["scores"][name], hidden=40, mamba_heads=2)
    got = load_file(str(out / "model.safetensors"))
    ref = reference_slice(spec, nt.hub_state_dict(env["models"][name]), p)
    for k, v in ref.items():
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16)), k
    hf = nt.load_hf(out, dtype=torch.bfloat16)
    assert torch.isfinite(nt.hf_logits(hf, nt.random_tokens(spec.vocab, 1, 9, seed=3))).all()


def test_prune_without_scores_drops_layers_by_index(env, tmp_path):
    name = "m_a_f_g1"
    out = tmp_path / "out"
    nt.run_cli("prune", env["dirs"][name], "--set", "drop_layers=0,2", "--out", out)
    p = reference_plan(spec_of(name), env["scores"][name], drop=(0, 2))
    check_pruned(env, name, out, p, tmp_path / "work")


@pytest.mark.parametrize("case", [
    "unknown_key", "too_wide", "heads_not_multiple", "nothing_left", "needs_scores", "both_modes",
    "neither_mode", "scores_of_other_model", "out_not_empty", "bad_candidate_suffix", "missing_candidates"])
def test_prune_errors(env, tmp_path, case):
    name = "m_a_f_g1"
    d, s = env["dirs"][name], env["score_dirs"][name]
    out = tmp_path / "out"
    args = {
        "unknown_key": [d, "--scores", s, "--set", "width=3"],
        "too_wide": [d, "--scores", s, "--set", "hidden_size=49"],
        "heads_not_multiple": [d, "--scores", s, "--set", "num_attention_heads=3"],
        "nothing_left": [d, "--scores", s, "--set", "drop_layers=0,1,2,3,4"],
        "needs_scores": [d, "--set", "intermediate_size=10"],
        "both_modes": [d, "--scores", s, "--set", "hidden_size=8", "--candidate", tmp_path / "c.json"],
        "neither_mode": [d, "--scores", s],
        "scores_of_other_model": [d, "--scores", env["score_dirs"]["g4_gqa"], "--set", "hidden_size=8"],
        "out_not_empty": [d, "--scores", s, "--set", "hidden_size=8"],
        "bad_candidate_suffix": [d, "--scores", s, "--candidate", str(tmp_path / "c.json") + "#zero"],
        "missing_candidates": [d, "--scores", s, "--candidate", tmp_path / "nope.json"],
    }[case]
    if case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    r = nt.run_cli("prune", *args, "--out", out, check=False)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], r.stderr
    if case == "out_not_empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
