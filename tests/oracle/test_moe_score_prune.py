"""MoE (`E`) layers in `score` and `prune`, checked against transformers.

score: every MoE statistic (per routed expert: routing frequency, mean
routing weight, mean || weight x expert output ||_2 over its routed tokens;
per expert-FFN neuron summed over experts; per shared-expert neuron) is
recomputed here from transformers' NemotronHMoE: the block inputs are
captured with hooks and the routing, experts and aggregations are redone in
fp64 with torch, independently of our code. The calibration windows are
those `random_windows` documents (SplitMix64 starts, redone here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import moe_tiny as mt
import nemotron_tiny as nt
from test_score_search import write_dataset

SEQ = 40
SAMPLES = 5


def _random_windows(total: int, seq_len: int, n: int, seed: int = 1234) -> list[int]:
    """token_windows.h random_windows: SplitMix64 draws, rejection below 2^64 mod bound."""
    mask = (1 << 64) - 1
    state = seed

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    bound = total - seq_len
    threshold = ((1 << 64) - bound) % bound
    out = []
    for _ in range(n):
        x = nxt()
        while x < threshold:
            x = nxt()
        out.append(x % bound)
    return out


def _eager(model):
    # transformers' default experts path (torch._grouped_mm) needs 16-byte
    # aligned widths; its eager loop is the reference semantics anyway.
    model.set_experts_implementation("eager")
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_score")
    out = {"root": root, "models": {}, "ckpts": {}, "data": {}}
    for name in ("e6_g3", "e10_latent"):
        spec = mt.SPECS_BY_NAME[name]
        model = _eager(mt.build_model(spec))
        out["models"][name] = model
        out["ckpts"][name] = mt.save_checkpoint(model, spec, root / f"{name}_hub", "hub")
        rng = np.random.default_rng(spec.seed)
        out["data"][name] = write_dataset(root / f"calib_{name}", [rng.integers(0, spec.vocab, 300)])
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _seq(values: torch.Tensor, how: str) -> torch.Tensor:
    """[L, C] -> [C], the sequence aggregation of width_statistics.h."""
    if how == "mean":
        return values.abs().mean(0)
    if how == "l2":
        return values.square().sum(0).sqrt()
    return values.abs().amax(0)


@torch.no_grad()
def reference_stats(model, spec, ids: torch.Tensor, seq: str) -> dict[int, dict[str, torch.Tensor]]:
    """Per MoE layer, the statistics of the samples `ids` [B, L] in fp64:
    expert statistics over every token, neuron scores aggregated over each
    sample's sequence (`seq`) and then over samples by L2 (batch=l2)."""
    inputs = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        if layer.block_type == "moe":
            hooks.append(layer.mixer.register_forward_pre_hook(
                lambda m, args, i=i: inputs.__setitem__(i, args[0].detach().clone())))
    try:
        nt.hf_logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i, h in inputs.items():
        mixer = model.model.layers[i].mixer
        x = h.reshape(-1, h.shape[-1])
        _, weights, indices = mixer.gate(h)  # transformers' own routing
        xl = mixer.fc1_latent_proj(x).double()
        up, down = mixer.experts.up_proj.double(), mixer.experts.down_proj.double()
        T, E, F = x.shape[0], spec.experts, spec.expert_ffn
        B, L = ids.shape
        slots = torch.zeros(E, dtype=torch.float64)
        wsum = torch.zeros(E, dtype=torch.float64)
        nsum = torch.zeros(E, dtype=torch.float64)
        neurons = torch.zeros(B, F, dtype=torch.float64)
        for e in range(E):
            tok, pos = torch.where(indices == e)
            if tok.numel() == 0:
                continue
            act = torch.relu(xl[tok] @ up[e].T).square()
            w = weights[tok, pos].double()
            y = (act @ down[e].T) * w[:, None]
            slots[e] = tok.numel()
            wsum[e] = w.sum()
            nsum[e] = y.norm(dim=1).sum()
            full = torch.zeros(T, F, dtype=torch.float64)
            full[tok] = act
            neurons += torch.stack([_seq(full[b * L:(b + 1) * L], seq) for b in range(B)])
        shared = torch.relu(x.double() @ mixer.shared_experts.up_proj.weight.double().T).square()
        shared = torch.stack([_seq(shared[b * L:(b + 1) * L], seq) for b in range(B)])
        used = slots.clamp_min(1)
        out[i] = {"moe_experts": nsum / used, "moe_expert_weight": wsum / used, "moe_expert_frequency": slots / T,
                  "moe_expert_neurons": neurons.square().sum(0).sqrt(),
                  "moe_shared_neurons": shared.square().sum(0).sqrt()}
    return out


@pytest.mark.parametrize("name,seq", [("e6_g3", "mean"), ("e10_latent", "l2"), ("e6_g3", "max")])
def test_score_moe_statistics_match_transformers(work, tmp_path, name, seq):
    spec = mt.SPECS_BY_NAME[name]
    out = tmp_path / "scores"
    # Five windows in batches of 2, 2 and 1.
    nt.run_cli("score", work["ckpts"][name], "--data", work["data"][name], "--samples", SAMPLES, "--seq-len", SEQ,
               "--batch", 2, "--aggregation", f"seq={seq},batch=l2", "--out", out)
    got = _read(out / "importance.safetensors")
    tokens = np.fromfile(str(work["data"][name]) + ".bin", dtype="<u2").astype(np.int64)
    starts = _random_windows(len(tokens), SEQ, SAMPLES)
    ids = torch.as_tensor(np.stack([tokens[s0:s0 + SEQ] for s0 in starts]))
    ref = reference_stats(work["models"][name], spec, ids, seq)
    assert sorted(ref) == [i for i, c in enumerate(spec.pattern) if c == "E"]
    for i, stats in ref.items():
        assert abs(float(stats["moe_expert_frequency"].sum()) - spec.k) < 1e-9
        for key, want in stats.items():
            have = got[f"layers.{i}.{key}"].double()
            assert have.shape == want.shape, (key, have.shape, want.shape)
            torch.testing.assert_close(have, want, rtol=2e-5, atol=1e-7, msg=f"layer {i} {key}")
        assert got[f"layer.kl"][i] > 0  # E layers take part in the drop-one metrics
    report = (out / "report.md").read_text()
    assert "## MoE routers" in report and "moe_router_load.png" in report
    assert (out / "moe_router_load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    j = json.loads((out / "importance.json").read_text())
    assert j["config"]["n_routed_experts"] == spec.experts


# ----------------------------------------------------------------------------
# prune: experts by importance, expert width, shared width; transformers
# loads the result and it computes what the masked parent computes
# ----------------------------------------------------------------------------

# Models whose router groups can lose experts (at least two stay per group).
PRUNE_SPECS = {
    # 12 experts in 3 groups (2 groups per token), 2 per token
    "e12_g3": mt.MoeSpec("e12_g3", seed=31, pattern="ME*E-", experts=12, k=2, n_group=3, topk_group=2,
                         expert_ffn=20, shared_ffn=24, scaling=2.5),
    # 8 experts in 2 groups (1 group per token), latent projections, no normalisation
    "e8_latent": mt.MoeSpec("e8_latent", seed=32, pattern="EM*E", experts=8, k=2, n_group=2, topk_group=1,
                            expert_ffn=16, shared_ffn=12, latent=24, norm_topk_prob=False, scaling=1.5),
}


@pytest.fixture(scope="module")
def pruning(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_prune")
    out = {}
    rng = np.random.default_rng(3)
    for name, spec in PRUNE_SPECS.items():
        model = _eager(mt.build_model(spec))
        ckpt = mt.save_checkpoint(model, spec, root / name, "hub")
        data = write_dataset(root / f"calib_{name}", [rng.integers(0, spec.vocab, 400) for _ in range(4)])
        scores = root / f"scores_{name}"
        nt.run_cli("score", ckpt, "--data", data, "--samples", 8, "--seq-len", 32, "--batch", 4, "--out", scores)
        out[name] = {"model": model, "ckpt": ckpt, "scores": scores}
    return out


# prune's default --expert-ranking (expert_ranking.h) and each ranking's
# per-expert score, from the score files: f = routing frequency, n = mean
# weighted-output norm per routed token.
DEFAULT_RANKING = "contribution"
RANKINGS = {
    "output_norm": lambda imp, i: imp[f"layers.{i}.moe_experts"],
    "frequency": lambda imp, i: imp[f"layers.{i}.moe_expert_frequency"],
    "contribution": lambda imp, i: imp[f"layers.{i}.moe_expert_frequency"] * imp[f"layers.{i}.moe_experts"],
}


def _top_per_group(scores: torch.Tensor, keep: int, groups: int) -> list[int]:
    """The `keep` best of every one of `groups` equal groups (ties: lower index), ascending."""
    per = scores.numel() // groups
    kept = []
    for g in range(groups):
        part = scores[g * per:(g + 1) * per].tolist()
        order = sorted(range(per), key=lambda j: (-part[j], j))[:keep // groups]
        kept += [g * per + j for j in order]
    return sorted(kept)


@torch.no_grad()
def _masked_parent(model, spec, plan: dict[int, dict[str, list[int]]]):
    """The parent with the pruned units masked: a dropped expert gets a
    correction bias of -1e30 (the router never picks it; every group keeps
    two experts, so the group scores are the kept experts'), a dropped
    expert or shared-expert neuron a zero up_proj row (relu(0)^2 = 0)."""
    import copy
    m = copy.deepcopy(model)
    for i, p in plan.items():
        mixer = m.model.layers[i].mixer
        for e in range(spec.experts):
            if e not in p["experts"]:
                mixer.gate.e_score_correction_bias[e] = -1e30
            mixer.experts.up_proj[e, [j for j in range(spec.expert_ffn) if j not in p["neurons"]]] = 0
        mixer.shared_experts.up_proj.weight[[j for j in range(spec.shared_ffn) if j not in p["shared"]]] = 0
    return m


@pytest.mark.parametrize("name", list(PRUNE_SPECS))
def test_prune_moe_by_importance_equals_masked_parent_in_transformers(pruning, tmp_path, name):
    spec, work = PRUNE_SPECS[name], pruning[name]
    experts, neurons, shared = spec.experts // 2, spec.expert_ffn // 2 + 1, spec.shared_ffn - 4
    out = tmp_path / "pruned"
    nt.run_cli("prune", work["ckpt"], "--scores", work["scores"], "--out", out, "--set", f"n_routed_experts={experts}",
               f"moe_intermediate_size={neurons}", f"moe_shared_expert_intermediate_size={shared}")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["moe_shared_expert_intermediate_size"]) == (
        experts, neurons, shared)
    assert cfg["n_group"] == spec.n_group and cfg["num_experts_per_tok"] == spec.k
    # The kept units are the best by the scores, per router group for experts.
    imp = _read(work["scores"] / "importance.safetensors")
    plan = {}
    for i, c in enumerate(spec.pattern):
        if c == "E":
            plan[i] = {"experts": _top_per_group(RANKINGS[DEFAULT_RANKING](imp, i), experts, spec.n_group),
                       "neurons": _top_per_group(imp[f"layers.{i}.moe_expert_neurons"], neurons, 1),
                       "shared": _top_per_group(imp[f"layers.{i}.moe_shared_neurons"], shared, 1)}
    got = _read(out / "model.safetensors")
    parent = mt.hub_state_dict(work["model"])
    for i, p in plan.items():
        pre = f"backbone.layers.{i}.mixer."
        assert torch.equal(got[pre + "gate.weight"], parent[pre + "gate.weight"][p["experts"]])
        assert torch.equal(got[pre + "gate.e_score_correction_bias"],
                           parent[pre + "gate.e_score_correction_bias"][p["experts"]])
        for q, e in enumerate(p["experts"]):
            assert torch.equal(got[pre + f"experts.{q}.up_proj.weight"],
                               parent[pre + f"experts.{e}.up_proj.weight"][p["neurons"]])
            assert torch.equal(got[pre + f"experts.{q}.down_proj.weight"],
                               parent[pre + f"experts.{e}.down_proj.weight"][:, p["neurons"]])
        assert f"{pre}experts.{experts}.up_proj.weight" not in got
    # transformers loads it whole; its logits are ours and the masked parent's.
    hf, info = nt.NemotronHForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    _eager(hf.eval())
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(key), f"{key}: {info.get(key)}"
    ids = nt.random_tokens(spec.vocab, 2, 19, seed=spec.seed)
    hf_out = nt.hf_logits(hf, ids)
    ours = nt.cli_logits(out, ids, tmp_path / "work")
    assert (ours - hf_out).abs().max().item() < 1e-4
    masked = nt.hf_logits(_masked_parent(work["model"], spec, plan), ids)
    assert (hf_out - masked).abs().max().item() < 1e-4
    full = nt.hf_logits(work["model"], ids)
    assert (hf_out - full).abs().max().item() > 1e-2, "pruning changed nothing: the check would be vacuous"


def test_prune_moe_with_hidden_and_layers_loads_in_transformers(pruning, tmp_path):
    spec, work = PRUNE_SPECS["e12_g3"], pruning["e12_g3"]
    out = tmp_path / "pruned"
    nt.run_cli("prune", work["ckpt"], "--scores", work["scores"], "--out", out, "--dtype", "bf16", "--set",
               "hidden_size=32", "n_routed_experts=9", "keep_moe=1")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hybrid_override_pattern"].count("E") == 1 and cfg["hidden_size"] == 32
    hf = _eager(nt.load_hf(out))
    tensors = _read(out / "model.safetensors")
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if k.endswith("e_score_correction_bias"))
    ids = nt.random_tokens(spec.vocab, 1, 11, seed=4)
    ours = nt.cli_logits(out, ids, tmp_path / "work")
    assert (ours - nt.hf_logits(hf, ids)).abs().max().item() < 2e-2  # bf16 weights, both computed in fp32


@pytest.mark.parametrize("sets,needle", [
    (["n_routed_experts=8"], "not a multiple of n_group (3)"),
    (["n_routed_experts=3"], "at least 2 experts per group"),
    (["n_routed_experts=16"], "larger than the parent"),
    (["moe_intermediate_size=0"], "at least 1"),
    (["n_routed_experts=6", "--expert-ranking", "norm"], "expected output_norm, frequency or contribution"),
])
def test_prune_moe_bad_expert_counts_are_one_line_errors(pruning, tmp_path, sets, needle):
    out = tmp_path / "pruned"
    r = nt.run_cli("prune", pruning["e12_g3"]["ckpt"], "--scores", pruning["e12_g3"]["scores"], "--out", out,
                   "--set", *sets, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


def test_prune_moe_expert_ranking_picks_the_kept_experts(pruning, tmp_path):
    """Each --expert-ranking keeps the best experts per router group by its
    score (the router rows show which); on these scores the rankings differ."""
    work, spec = pruning["e12_g3"], PRUNE_SPECS["e12_g3"]
    imp = _read(work["scores"] / "importance.safetensors")
    parent = mt.hub_state_dict(work["model"])
    layers = [i for i, c in enumerate(spec.pattern) if c == "E"]
    kept_by = {}
    for ranking, score in RANKINGS.items():
        out = tmp_path / ranking
        nt.run_cli("prune", work["ckpt"], "--scores", work["scores"], "--out", out, "--set", "n_routed_experts=6",
                   "--expert-ranking", ranking)
        got = _read(out / "model.safetensors")
        kept_by[ranking] = []
        for i in layers:
            want = _top_per_group(score(imp, i), 6, spec.n_group)
            gate = f"backbone.layers.{i}.mixer.gate.weight"
            assert torch.equal(got[gate], parent[gate][want]), (ranking, i, want)
            kept_by[ranking].append(want)
    assert len({json.dumps(v) for v in kept_by.values()}) > 1, f"the rankings agree here: vacuous ({kept_by})"


def test_prune_moe_fused_layout_is_refused_with_a_way_out(tmp_path):
    spec = PRUNE_SPECS["e8_latent"]
    ckpt = mt.save_checkpoint(mt.build_model(spec), spec, tmp_path / "fused", "fused")
    out = tmp_path / "pruned"
    r = nt.run_cli("prune", ckpt, "--out", out, "--set", "moe_shared_expert_intermediate_size=8", check=False)
    assert r.returncode == 2 and "fused expert tensors" in r.stderr and len(r.stderr.strip().split("\n")) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------
# search: expert axes, --max-active-params, and prune --candidate of the result
# ----------------------------------------------------------------------------

def _active_params(cfg: dict) -> int:
    """transformers' parameter count of a config less the routed experts a token is not sent to."""
    from transformers import NemotronHConfig, NemotronHForCausalLM
    c = dict(cfg)
    with torch.device("meta"):
        m = NemotronHForCausalLM(NemotronHConfig.from_dict(c))
    total = sum(p.numel() for n, p in m.named_parameters())
    routed = sum(p.numel() for n, p in m.named_parameters() if ".mixer.experts." in n)
    e, k = c["n_routed_experts"], c["num_experts_per_tok"]
    return total - routed // e * (e - k) if e else total


def test_search_moe_respects_active_params_and_its_candidate_prunes(pruning, tmp_path):
    spec, work = PRUNE_SPECS["e12_g3"], pruning["e12_g3"]
    full = json.loads((work["ckpt"] / "config.json").read_text())
    limit = int(0.8 * _active_params(full))
    out = tmp_path / "c.json"
    nt.run_cli("search", work["ckpt"], "--scores", work["scores"], "--budget", "100MiB", "--space", "depth",
               "--axis", "moe_experts=6:12:3", "--axis", "moe_expert_ffn=10:20:5", "--axis", "moe_shared_ffn=12:24:12",
               "--max-active-params", limit, "--top-k", 3, "--out", out)
    result = json.loads(out.read_text())
    assert result["max_active_params"] == limit
    for c in result["candidates"]:
        # our active count is transformers' count less the unused experts
        assert c["params"]["active"] == _active_params(c["config"]) <= limit
        assert c["config"]["n_routed_experts"] % spec.n_group == 0
    pruned = tmp_path / "pruned"
    nt.run_cli("prune", work["ckpt"], "--scores", work["scores"], "--candidate", f"{out}#1", "--out", pruned)
    hf = _eager(nt.load_hf(pruned))
    ids = nt.random_tokens(spec.vocab, 1, 13, seed=8)
    assert (nt.cli_logits(pruned, ids, tmp_path / "work") - nt.hf_logits(hf, ids)).abs().max().item() < 1e-4


def test_search_moe_unreachable_active_limit_names_the_smallest(pruning, tmp_path):
    out = tmp_path / "c.json"
    r = nt.run_cli("search", pruning["e12_g3"]["ckpt"], "--uniform-scores", "--budget", "1GiB", "--space", "depth",
                   "--max-active-params", "1000", "--out", out, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 1 and "smallest active count reachable in the allowed space is" in lines[0], r.stderr
    assert not out.exists()


def test_search_moe_rank_data_prunes_each_candidate_in_memory(pruning, tmp_path):
    """--rank-data prunes every candidate (experts included) in memory and measures it."""
    work = pruning["e12_g3"]
    rng = np.random.default_rng(11)
    data = write_dataset(tmp_path / "rank", [rng.integers(0, PRUNE_SPECS["e12_g3"].vocab, 300) for _ in range(2)])
    out = tmp_path / "c.json"
    nt.run_cli("search", work["ckpt"], "--scores", work["scores"], "--budget", "100MiB", "--space", "depth",
               "--axis", "moe_experts=6:12:6", "--axis", "moe_layers=2", "--axis", "mamba_layers=1",
               "--axis", "attention_layers=1", "--axis", "mlp_layers=1", "--top-k", 2, "--rank-data", data,
               "--rank-tokens", 64, "--rank-seq-len", 16, "--out", out)
    cands = json.loads(out.read_text())["candidates"]
    assert len(cands) == 2 and {c["config"]["n_routed_experts"] for c in cands} == {6, 12}
    for c in cands:
        assert 0 <= c["measured"]["agreement"] <= 1 and c["measured"]["loss"] > 0
    full = next(c for c in cands if c["config"]["n_routed_experts"] == 12)
    assert full["measured"]["agreement"] == 1.0 and full["measured"]["kl"] < 1e-6  # the parent itself


@pytest.mark.parametrize("value", ["abc", "1x", "-5", "0"])
def test_search_bad_max_active_params_is_one_line(pruning, tmp_path, value):
    out = tmp_path / "c.json"
    r = nt.run_cli("search", pruning["e12_g3"]["ckpt"], "--uniform-scores", "--budget", "1GiB",
                   "--max-active-params", value, "--out", out, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().split("\n")) == 1 and "--max-active-params" in r.stderr, r.stderr
    assert not out.exists()
