"""`emofast discover`: per-emotion head and neuron discovery, top-k ablation curves and the
circuit comparison, as one report folder.

Per emotion, on instructed sev6 prompts from TRAIN skeletons with the reply prefilled "I feel"
and the metric of `circuits.emotion_metrics` (logit of the emotion's feeling words minus the
other emotions'), everything at all positions:
1. exact head ranking: zero-ablate each of the L x H heads (batched sweep) -> effect [L, H];
2. attribution screen of every head and neuron (one forward and backward per batch); its rank
   correlation with the exact head effects, and how many of the exact top 10 heads the screen's
   top `k_verify` (verified exactly, as a discovery workflow would) recovers;
3. neuron ranking along the emotion's residual direction (sev6 directions, every layer):
   `rank_neurons` projection W_down[j] . v and contribution (mean over prompts of each
   prompt's mean activation over its tokens, x projection), as arXiv 2510.11328 ranks them;
4. top-k ablation curves, k = 1..k_max: ablate together the k neurons the screen ranks most
   supportive (most negative estimated effect), the k neurons with the largest contribution
   along the direction, the k heads the exact ranking does, and k random neurons as a control.
   Does the effect saturate at small k (arXiv 2510.11328)?
5. `circuits_run.run_circuits` in DIR/circuits: sublayer importance, circuits under a budget, and
   circuit modulation vs residual steering vs prompting on held-out prompts.
Writes DIR/report.json, PNGs and DIR/index.html.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import report
from .circuits import emotion_metrics, importance_prompts
from .circuits_run import run_circuits
from .data import EMOTIONS6, load_skeletons
from .directions import EmotionDirections
from .discover import attribution_screen, rank_neurons, spearman
from .extract import default_directions
from .models import Model
from .planner import Edit
from .sites import sites_for
from .sweep import Metric, sweep


@dataclass
class DiscoverConfig:
    n_skeletons: int            # train skeletons -> 2 prompts each (negative, positive event)
    k_max: int = 64             # top-k curves: k = 1..k_max
    k_verify: int = 32          # screen's top heads verified exactly
    batch_size: int = 16
    circuits: bool = True       # also run circuits_run.run_circuits

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
                     directions: EmotionDirections, emotion: str, *, seed: int = 0,
                     progress: bool = True) -> dict:
    """Steps 1-4 of the module docstring for one emotion's prompts and metric; `directions`
    must cover every layer."""
    L, H, N = model.n_layers, model.n_heads, model.d_mlp
    if sorted(directions.layers) != list(range(L)):
        raise ValueError(f"discover needs directions at every layer 0..{L - 1}, got "
                         f"{directions.layers}")
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
    acts = model.cache(prompts, sites_for("mlp_act", range(L)), positions="mean",
                       batch_size=cfg.batch_size, progress=False)            # [N_prompts, d_mlp]
    ranking = rank_neurons(model, directions, emotion, acts=acts)
    direction_order = ranking.contribution.flatten().argsort(descending=True)[:k_max].tolist()

    def curve(order, n_units, site):
        return [_grouped([(i // n_units, i % n_units) for i in order[:k]], site) for k in ks]
    curves_v = (curve(neuron_order, N, "mlp_act") + curve(head_order, H, "attn_z")
                + curve(random_order, N, "mlp_act") + curve(direction_order, N, "mlp_act"))
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
        "curve_heads": eff[k_max:2 * k_max].tolist(),
        "curve_random": eff[2 * k_max:3 * k_max].tolist(),
        "curve_direction": eff[3 * k_max:].tolist(),
        "direction_top": [{"layer": layer, "neuron": n, "contribution": c,
                           "projection": ranking.projection[layer, n].item()}
                          for layer, n, c in ranking.top(10, by="contribution")],
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
    dirs = default_directions(model, progress=progress)
    per = {e: discover_emotion(model, prompts[e], metrics[e], cfg, dirs, e, progress=progress)
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
    rankings = {"screen-ranked": "curve_neurons", "direction-ranked": "curve_direction",
                "random": "curve_random"}
    neurons = {name: torch.tensor([r[key] for r in per.values()]).mean(0)
               for name, key in rankings.items()}
    report.plot_layer_curves(out / "topk_neurons.png", ks, neurons, xlabel="k (neurons ablated)",
                             title=f"top-k neurons ablated together, mean over {len(per)} "
                                   "emotions (ablated - clean)",
                             ylabel="metric change", ylim=None, mark_best=False)
    report.plot_layer_curves(out / "topk_heads.png", ks,
                             {e: r["curve_heads"] for e, r in per.items()},
                             xlabel="k (heads ablated)",
                             title="top-k heads ablated together (ablated - clean)",
                             ylabel="metric change", ylim=None, mark_best=False)
    pts = torch.cat([torch.stack([r["head_effect"].flatten(), r["screen_heads"].flatten()], 1)
                     for r in per.values()])
    labels = [e for e in per for _ in range(L * H)]
    report.plot_scatter_2d(out / "screen_vs_exact.png", pts, labels,
                           title="heads: attribution estimate vs exact ablation effect",
                           xlabel="exact (sweep)", ylabel="estimate (attribution)")


def _write_index(out: Path, r: dict) -> None:
    S, T = report.Section, report.Table
    rows, k = [], next(iter(r["emotions"].values()))["ks"][-1]   # k_max
    for e, x in r["emotions"].items():
        he = x["head_effect"]
        top = int(he.flatten().argmin())
        H = he.shape[1]
        curve = x["curve_neurons"]
        d = x["direction_top"][0]
        rows.append([e, x["clean"], f"L{top // H}.H{top % H}", he.min().item(),
                     x["spearman_all_heads"], f"{x['top10_found']}/10", curve[0],
                     curve[min(8, k) - 1], curve[-1], x["curve_direction"][-1],
                     x["curve_random"][-1], f"L{d['layer']}.N{d['neuron']}"])
    sections = [
        S("Per emotion", f"{r['metric']}. {r['n_prompts_per_emotion']} prompts per emotion "
          "(instructed sev6, train skeletons). Screen top-10: exact top-10 heads recovered by "
          f"verifying the screen's top {r['config']['k_verify']}. Neuron columns: effect of "
          "ablating the screen's top k neurons together, the top k by contribution along the "
          "emotion's direction, and k random neurons.",
          table=T(["emotion", "clean", "top head", "its effect", "Spearman screen/exact",
                   "screen top-10", "screen top-1 neuron", f"top-{min(8, k)}", f"top-{k}",
                   f"direction top-{k}", f"{k} random", "top direction neuron"], rows)),
        S("Top-k ablation curves", "Effect of ablating the top-k units together. Neurons: "
          "ranked by the attribution screen (most supportive first), by contribution along "
          "the emotion's residual direction (mean activation x W_down . v), or random.",
          images=["topk_neurons.png", "topk_heads.png"]),
        S("Attribution screen vs exact", images=["screen_vs_exact.png"]),
        S("Head importance (exact zero ablation)",
          images=[f"heads_{e}.png" for e in r["emotions"]]),
    ]
    if "circuits" in r:
        sections.append(S("Circuits, modulation vs steering vs prompting",
                          "See circuits/index.html.", images=["circuits/control_accuracy.png"]))
    report.write_index(out, f"emofast discover: {r['model']}", sections)
