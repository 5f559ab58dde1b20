#!/usr/bin/env python3
"""Helpers of the experiment's MoE arm (examples/experiment/moe_arm.sh; the venv's python).

  moe_arm.py init OUT SEED              a random MoE teacher (transformers' NemotronH with `E`
                                        layers), written in the Hub layout: one tensor per expert
  moe_arm.py random-experts SCORES_IN SCORES_OUT SEED
                                        the same scores with every per-expert score replaced by
                                        uniform noise: `prune` then keeps random experts (per
                                        router group), everything else as the importance arm
  moe_arm.py kept-experts PARENT CHILD  which parent experts each MoE layer of CHILD kept (JSON;
                                        matched by their weights)
  moe_arm.py summarize WORK RESULTS_DIR results.json, results.md, distill_kd.png
"""
import json
import os
import shutil
import sys

import numpy as np

# The teacher: 6 layers (2 Mamba, 3 MoE, 1 attention), 8 routed experts of width 64 per MoE
# layer in one router group, 2 per token, plus a shared expert of width 64. Small enough to
# train, score, prune and distill in minutes on two cores.
PATTERN = "MEME*E"
MOE = dict(n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=64,
           moe_shared_expert_intermediate_size=64, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=1.0)
BASE = dict(vocab_size=259, hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
            mamba_num_heads=4, mamba_head_dim=32, ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=32)
TYPES = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}


def init(out: str, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import NemotronHConfig, NemotronHForCausalLM

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
    from make_tiny_model import init_parameters  # one init recipe for every tiny model

    cfg = NemotronHConfig(hybrid_override_pattern=PATTERN, num_hidden_layers=len(PATTERN), intermediate_size=4 * 96,
                          layer_norm_epsilon=1e-5, tie_word_embeddings=False, use_mamba_kernels=False,
                          **BASE, **MOE)
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(cfg).float().eval()
    # tools/make_tiny_model.py's recipe, the routed experts and the router
    # included; the correction bias stays 0 (a buffer).
    init_parameters(model, seed)
    # Hub names and one tensor per routed expert (what `prune` reads)
    sd = {}
    for k, v in model.state_dict().items():
        k = "backbone." + k[len("model."):] if k.startswith("model.") else k
        if k.endswith("mixer.experts.up_proj") or k.endswith("mixer.experts.down_proj"):
            base, proj = k.rsplit(".", 1)
            for e in range(v.shape[0]):
                sd[f"{base}.{e}.{proj}.weight"] = v[e].contiguous().clone()
        else:
            sd[k] = v.contiguous().clone()
    os.makedirs(out, exist_ok=True)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "torch_dtype": "float32",
              "hybrid_override_pattern": PATTERN, "num_hidden_layers": len(PATTERN), "intermediate_size": 4 * 96,
              "mlp_hidden_act": "relu2", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
              "max_position_embeddings": 4096, **BASE, **MOE}
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: pattern {PATTERN}, {n:,} parameters, seed {seed}")


def random_experts(src: str, dst: str, seed: int) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(src, "importance.safetensors")
    with safe_open(path, "np") as f:
        meta = f.metadata()
    tensors = load_file(path)
    rng = np.random.default_rng(seed)
    out, replaced = {}, []
    for k, v in sorted(tensors.items()):
        # per-expert scores (importance, frequency, weight); neuron scores stay
        if "moe_expert" in k and "neuron" not in k:
            out[k] = rng.random(v.shape).astype(np.float32)
            replaced.append(k)
        else:
            out[k] = v
    if not replaced:
        sys.exit(f"random-experts: no per-expert scores in {path}")
    save_file(out, os.path.join(dst, "importance.safetensors"), metadata=meta)
    shutil.copy(os.path.join(src, "importance.json"), os.path.join(dst, "importance.json"))
    print(f"random-experts: {len(replaced)} tensors of uniform noise (seed {seed}) -> {dst}")


def _experts(folder: str) -> dict:
    """{layer: [up_proj of expert 0, 1, ...]} of a Hub-layout checkpoint."""
    from safetensors.numpy import load_file
    sd = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(folder, f)))
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) == 8 and parts[3:5] == ["mixer", "experts"] and parts[6] == "up_proj":
            out.setdefault(int(parts[2]), {})[int(parts[5])] = v
    return {layer: [e[i] for i in sorted(e)] for layer, e in out.items()}


def kept_experts(parent: str, child: str) -> dict:
    """Parent expert indices of each child MoE layer, in the child's order (layers by parent
    position: the arm drops no layer)."""
    p, c = _experts(parent), _experts(child)
    kept = {}
    for layer, experts in c.items():
        kept[layer] = [next(i for i, q in enumerate(p[layer]) if q.shape == e.shape and np.array_equal(q, e))
                       for e in experts]
    return kept


def _jsonl(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def summarize(work: str, res: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.numpy import load_file

    os.makedirs(res, exist_ok=True)
    meta = json.load(open(os.path.join(work, "meta.json")))
    teacher_eval = json.load(open(os.path.join(work, "teacher.eval.json")))
    inspect = lambda name: json.load(open(os.path.join(work, f"{name}.inspect.json")))
    t_ins = inspect("teacher")
    scores = load_file(os.path.join(work, "scores", "importance.safetensors"))
    freq = {k: v for k, v in scores.items() if "moe_expert_frequency" in k}
    teacher_dir = meta["teacher_dir"]
    rows = [{"arm": "teacher", "label": "MoE teacher (8 experts/layer)", "params": t_ins["parameters"]["total"],
             "active": t_ins["parameters"]["active"], "before": None,
             "after": {"loss": teacher_eval["loss"], "accuracy": teacher_eval["accuracy"], "kl": 0.0, "agreement": 1.0}}]
    curves = {}
    for a in meta["arms"]:
        ins = inspect(a["name"])
        m = _jsonl(os.path.join(work, "runs", a["name"], "metrics.jsonl"))
        ev = [r for r in m if r.get("eval")]
        st = [r for r in m if not r.get("eval")]
        pick = lambda r: {k: r.get(k) for k in ("loss", "accuracy", "kl", "agreement")}
        kept = kept_experts(teacher_dir, os.path.join(work, "students", a["name"]))
        rows.append({"arm": a["name"], "label": a["label"], "params": ins["parameters"]["total"],
                     "active": ins["parameters"]["active"], "kept_experts": kept,
                     "before": pick(ev[0]), "after": pick(ev[-1]), "train_tokens": st[-1]["tokens"],
                     "seconds": st[-1].get("seconds")})
        curves[a["name"]] = (a, st)
    tl = teacher_eval["loss"]
    for r in rows:
        r["loss_gap_vs_teacher"] = r["after"]["loss"] / tl - 1.0
    # the routing share of the experts each arm kept (the teacher's routing frequency on the
    # calibration windows, per layer: a token counts once per expert it is sent to)
    routing = {}
    for k, v in freq.items():
        routing[k] = [float(x) for x in np.asarray(v).reshape(-1)]
    by = {r["arm"]: r for r in rows}
    # each ranked arm against the random one (one seed: a difference, not a significance test)
    verdict = {}
    if "random" in by:
        rnd = by["random"]["after"]
        for r in rows[1:]:
            if r["arm"] == "random":
                continue
            a = r["after"]
            verdict[r["arm"]] = {"lower_loss_than_random": a["loss"] < rnd["loss"],
                                 "lower_kl_than_random": a["kl"] < rnd["kl"],
                                 "loss_difference": rnd["loss"] - a["loss"], "kl_difference": rnd["kl"] - a["kl"]}
    out = {k: meta[k] for k in ("date", "machine", "commit", "minipuzzle", "teacher_tokens", "kd_tokens", "kd_lr",
                                "kd_min_lr", "seed", "random_seed", "eval", "steps", "tokens_per_step")}
    out.update(rows=rows, routing_frequency=routing, verdict=verdict, timings_s=meta.get("timings", {}))
    json.dump(out, open(os.path.join(res, "results.json"), "w"), indent=1)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (a, st) in curves.items():
        ax.plot([r["tokens"] for r in st], [r["kd"] for r in st], marker=".", label=a["label"])
    ax.set_xlabel("distillation tokens"); ax.set_ylabel("forward KL to the teacher (train windows, nats)")
    ax.set_title("MoE arm: distillation of the 4-expert students (same tokens)")
    ax.grid(alpha=.3); ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(os.path.join(res, "distill_kd.png"), dpi=110); plt.close(fig)

    L = []
    w = L.append
    w("# Compression experiment, MoE arm (CPU, small scale)\n")
    w(f"Date {meta['date']}, machine: {meta['machine']}, commit `{meta['commit']}`. Reproduce: "
      f"`examples/experiment/run.sh --arm moe` (total {meta.get('timings', {}).get('total', 0) / 60:.0f} min here).\n")
    w(f"Teacher: a random MoE model (`{PATTERN}`: {sum(c == 'E' for c in PATTERN)} MoE layers of "
      f"{MOE['n_routed_experts']} routed experts, {MOE['num_experts_per_tok']} per token, width "
      f"{MOE['moe_intermediate_size']}, plus a shared expert; hidden {BASE['hidden_size']}; "
      f"{t_ins['parameters']['total']:,} parameters, {t_ins['parameters']['active']:,} active per token) trained by "
      f"`minipuzzle train` on T = {meta['teacher_tokens']:,} byte tokens of the demo corpus "
      f"(router trained, correction bias frozen at 0). Every student keeps 4 of the 8 routed experts of every MoE "
      f"layer (every other weight as the teacher's) and is distilled on the same {meta['kd_tokens']:,} tokens "
      f"({meta['steps']} steps x {meta['tokens_per_step']} tokens, same data order, seed {meta['seed']}; LR peak "
      f"{meta['kd_lr']:g}, cosine to {meta['kd_min_lr']:g}).\n")
    w(f"Evaluation: {meta['eval']['description']}.\n")
    w("| arm | params | active | loss before | KL before | loss after | vs teacher | acc after | agreement | KL after |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    f3 = lambda v: "—" if v is None else f"{v:.4f}"
    for r in rows:
        b, a = r["before"] or {}, r["after"]
        gap = "—" if r["arm"] == "teacher" else f"{100 * r['loss_gap_vs_teacher']:+.1f}%"
        w(f"| {r['label']} | {r['params']:,} | {r['active']:,} | {f3(b.get('loss'))} | {f3(b.get('kl'))} | "
          f"{f3(a['loss'])} | {gap} | {f3(a['accuracy'])} | {f3(a['agreement'])} | {f3(a['kl'])} |")
    w("\nExperts kept per MoE layer (teacher indices) and their share of the teacher's routing on the "
      "calibration windows:\n")
    for r in rows[1:]:
        parts = []
        for layer, kept in sorted(r["kept_experts"].items(), key=lambda x: int(x[0])):
            key = next((k for k in routing if f".{layer}." in f".{k}." or k.endswith(f".{layer}")), None)
            share = ""
            if key:
                f = np.asarray(routing[key])
                share = f" ({100 * f[kept].sum() / f.sum():.0f}% of the routing)"
            parts.append(f"layer {layer}: {sorted(kept)}{share}")
        w(f"- {r['label']}: " + "; ".join(parts))
    w("")
    for line in meta.get("arm_notes", []):
        w(line)
    w("\n![distillation](distill_kd.png)\n")
    for arm, v in verdict.items():
        a, rnd = by[arm]["after"], by["random"]["after"]
        w(f"- {by[arm]['label']} vs 4 random experts after the same distillation: held-out loss {a['loss']:.4f} vs "
          f"{rnd['loss']:.4f} ({'lower' if v['lower_loss_than_random'] else 'not lower'}), KL to the teacher "
          f"{a['kl']:.4f} vs {rnd['kl']:.4f} ({'lower' if v['lower_kl_than_random'] else 'not lower'}).")
    w("")
    open(os.path.join(res, "results.md"), "w").write("\n".join(L) + "\n")
    print(f"wrote {res}/results.md, results.json, distill_kd.png")


def main() -> None:
    cmd, *a = sys.argv[1:]
    if cmd == "init":
        init(a[0], int(a[1]))
    elif cmd == "random-experts":
        random_experts(a[0], a[1], int(a[2]))
    elif cmd == "kept-experts":
        print(json.dumps(kept_experts(a[0], a[1])))
    elif cmd == "summarize":
        summarize(a[0], a[1])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
