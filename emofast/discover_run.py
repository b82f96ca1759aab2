"""`emofast discover`: per-emotion head and neuron discovery, top-k ablation curves and the
circuit comparison, as one report folder.

Per emotion, on instructed sev6 prompts from TRAIN skeletons with the reply prefilled "I feel"
and the metric of `circuits.emotion_metrics` (logit of the emotion's feeling words minus the
other emotions'), everything at all positions:
1. exact head ranking: zero-ablate each of the L x H heads (batched sweep) -> effect [L, H];
2. attribution screen of every head and neuron (one forward and backward per batch); its rank
   correlation with the exact head effects, and how many of the exact top 10 heads the screen's
   top `k_verify` (verified exactly, as a discovery workflow would) recovers;
3. top-k ablation curves, k = 1..k_max: ablate together the k neurons the screen ranks most
   supportive (most negative estimated effect), the k heads the exact ranking does, and k random
   neurons as a control. Does the effect saturate at small k (arXiv 2510.11328)?
4. `circuits.run_circuits` in DIR/circuits: sublayer importance, circuits under a budget, and
   circuit modulation vs residual steering vs prompting on held-out prompts.
Writes DIR/report.json, PNGs and DIR/index.html.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import report
from .circuits import emotion_metrics, importance_prompts, run_circuits
from .data import EMOTIONS6, load_skeletons
from .discover import attribution_screen, spearman
from .models import Model
from .planner import Edit
from .sweep import Metric, sweep


@dataclass
class DiscoverConfig:
    n_skeletons: int            # train skeletons -> 2 prompts each (negative, positive event)
    k_max: int = 64             # top-k curves: k = 1..k_max
    k_verify: int = 32          # screen's top heads verified exactly
    batch_size: int = 16
    circuits: bool = True       # also run circuits.run_circuits

    @classmethod
    def preset(cls, quick: bool) -> "DiscoverConfig":
        return cls(2) if quick else cls(12)


def _grouped(units: list[tuple[int, int]], site: str) -> list[Edit]:
    """(layer, unit) pairs -> one Edit per layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, u in units:
        by_layer.setdefault(layer, []).append(u)
    return [Edit(layer, site, us) for layer, us in sorted(by_layer.items())]


def discover_emotion(model: Model, prompts: list[str], metric: Metric, cfg: DiscoverConfig,
                     *, seed: int = 0, progress: bool = True) -> dict:
    """Steps 1-3 of the module docstring for one emotion's prompts and metric."""
    L, H, N = model.n_layers, model.n_heads, model.d_mlp
    kw = dict(positions="all", batch_size=cfg.batch_size, progress=progress)
    heads = [[Edit(layer, "attn_z", [h])] for layer in range(L) for h in range(H)]
    exact = sweep(model, prompts, [[]] + heads, metric, **kw)
    head_effect = (exact.values[1:] - exact.values[0]).view(L, H)            # [L, H]
    attr = attribution_screen(model, prompts, metric, positions="all", batch_size=cfg.batch_size)
    exact_top10 = set(head_effect.abs().flatten().topk(10).indices.tolist())
    screened = attr.heads.abs().flatten().topk(min(cfg.k_verify, L * H)).indices
    verified = head_effect.flatten()[screened].abs()                         # exact, as verified
    found = set(screened[verified.argsort(descending=True)[:10]].tolist())

    k_max = min(cfg.k_max, L * H)
    ks = list(range(1, k_max + 1))
    neuron_order = attr.neurons.flatten().argsort()[:k_max].tolist()         # most negative first
    head_order = head_effect.flatten().argsort()[:k_max].tolist()
    g = torch.Generator().manual_seed(seed)
    random_order = torch.randperm(L * N, generator=g)[:k_max].tolist()

    def curve(order, n_units, site):
        return [_grouped([(i // n_units, i % n_units) for i in order[:k]], site) for k in ks]
    curves_v = (curve(neuron_order, N, "mlp_act") + curve(head_order, H, "attn_z")
                + curve(random_order, N, "mlp_act"))
    res = sweep(model, prompts, [[]] + curves_v, metric, **kw)
    eff = res.values[1:] - res.values[0]
    return {
        "clean": exact.values[0].item(),
        "head_effect": head_effect,
        "screen_heads": attr.heads, "screen_neurons_top": [
            (i // N, i % N, attr.neurons.flatten()[i].item()) for i in neuron_order[:20]],
        "spearman_all_heads": spearman(attr.heads.flatten(), head_effect.flatten()),
        "top10_found": len(found & exact_top10), "k_verify": len(screened),
        "ks": ks, "curve_neurons": eff[:k_max].tolist(),
        "curve_heads": eff[k_max:2 * k_max].tolist(), "curve_random": eff[2 * k_max:].tolist(),
        "sweep_s": exact.elapsed_s + res.elapsed_s, "n_variants": len(heads) + 1 + len(curves_v),
    }


def run_discover(model: Model, out: str | Path, *, quick: bool = True, progress: bool = True,
                 config: DiscoverConfig | None = None,
                 emotions: tuple[str, ...] = EMOTIONS6) -> dict:
    """The whole discovery report (module docstring); returns report.json's content."""
    start, out = time.perf_counter(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or DiscoverConfig.preset(quick)
    skeletons = load_skeletons("sev6", split="train")[:cfg.n_skeletons]
    prompts = importance_prompts(model, skeletons, emotions=emotions)
    metrics = emotion_metrics(model)
    per = {e: discover_emotion(model, prompts[e], metrics[e], cfg, progress=progress)
           for e in emotions}
    _plots(out, model, per)
    result = {"model": model.name, "mode": "quick" if quick else "full", "config": vars(cfg),
              "n_prompts_per_emotion": len(prompts[emotions[0]]),
              "metric": "LogitDiff(emotion's feeling words, other emotions' words) after "
                        "'I feel', at the next token; effects are ablated - clean",
              "emotions": per}
    if cfg.circuits:
        result["circuits"] = run_circuits(model, out / "circuits", quick=quick, progress=progress)
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    report.write_json(out / "report.json", result)
    _write_index(out, result)
    return result


def _plots(out: Path, model: Model, per: dict) -> None:
    L, H = model.n_layers, model.n_heads
    for e, r in per.items():
        lim = float(r["head_effect"].abs().max()) or 1.0
        report.plot_heatmap(out / f"heads_{e}.png", r["head_effect"],
                            [str(x) for x in range(L)], [f"H{h}" for h in range(H)],
                            title=f"{e}: zero-ablating each head (ablated - clean)",
                            vmin=-lim, vmax=lim, cmap="RdBu", fmt="{:.1f}")
    ks = next(iter(per.values()))["ks"]
    for kind in ("neurons", "heads"):
        curves = {e: r[f"curve_{kind}"] for e, r in per.items()}
        if kind == "neurons":
            curves.update({f"{e} (random)": r["curve_random"] for e, r in per.items()})
        report.plot_layer_curves(out / f"topk_{kind}.png", ks, curves, xlabel="k (units ablated)",
                                 title=f"top-k {kind} ablated together (ablated - clean)",
                                 ylabel="metric change", ylim=None, mark_best=False)
    pts = torch.cat([torch.stack([r["head_effect"].flatten(), r["screen_heads"].flatten()], 1)
                     for r in per.values()])
    labels = [e for e in per for _ in range(L * H)]
    report.plot_scatter_2d(out / "screen_vs_exact.png", pts, labels,
                           title="heads: attribution estimate vs exact ablation effect",
                           xlabel="exact (sweep)", ylabel="estimate (attribution)")


def _write_index(out: Path, r: dict) -> None:
    S, T = report.Section, report.Table
    rows = []
    for e, x in r["emotions"].items():
        he = x["head_effect"]
        top = int(he.flatten().argmin())
        H = he.shape[1]
        at = {k: x["curve_neurons"][k - 1] for k in (1, 8, 64) if k <= len(x["ks"])}
        rows.append([e, x["clean"], f"L{top // H}.H{top % H}", he.min().item(),
                     x["spearman_all_heads"], f"{x['top10_found']}/10",
                     at.get(1), at.get(8), at.get(64), x["curve_random"][-1]])
    sections = [
        S("Per emotion", f"{r['metric']}. {r['n_prompts_per_emotion']} prompts per emotion "
          "(instructed sev6, train skeletons). Screen top-10: exact top-10 heads recovered by "
          f"verifying the screen's top {r['config']['k_verify']}.",
          table=T(["emotion", "clean", "top head", "its effect", "Spearman screen/exact",
                   "screen top-10", "top-1 neuron", "top-8 neurons", "top-64 neurons",
                   "64 random neurons"], rows)),
        S("Top-k ablation curves", "Effect of ablating the top-k units together; the "
          "'(random)' curves ablate k random neurons instead.", images=["topk_neurons.png", "topk_heads.png"]),
        S("Attribution screen vs exact", images=["screen_vs_exact.png"]),
        S("Head importance (exact zero ablation)",
          images=[f"heads_{e}.png" for e in r["emotions"]]),
    ]
    if "circuits" in r:
        sections.append(S("Circuits, modulation vs steering vs prompting",
                          "See circuits/index.html.", images=["circuits/control_accuracy.png"]))
    report.write_index(out, f"emofast discover: {r['model']}", sections)
