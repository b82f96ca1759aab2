"""The `emofast crossmodel` report: plots, the preprint-vs-emofast verdict table, index.html."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import report


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _late(values: list[float]) -> float:
    """Mean over the last third of the layers."""
    return _mean(values[len(values) * 2 // 3:])


def _linear_fit(alphas: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, R^2) of least squares ys ~ a + b * alphas."""
    x, y = torch.tensor(alphas), torch.tensor(ys)
    xc, yc = x - x.mean(), y - y.mean()
    slope = float((xc * yc).sum() / xc.pow(2).sum())
    ss = float(yc.pow(2).sum())
    return slope, (1.0 - float((yc - slope * xc).pow(2).sum()) / ss) if ss > 0 else 0.0


def _patch_summary(side) -> dict:
    """The strongest layer's judge response to alpha (direction and random): slope, R^2, gain."""
    p = side.patching
    out = {}
    for name in ("direction", "random"):
        per_layer = [[_mean(p.judge[name][e][li][a] for e in range(len(p.emotions)))
                      for a in range(len(p.alphas))] for li in range(len(p.layers))]
        best = max(range(len(p.layers)), key=lambda li: per_layer[li][-1] - per_layer[li][0])
        slope, r2 = _linear_fit(p.alphas, per_layer[best])
        out[name] = {"layer": p.layers[best], "depth": p.layers[best] / (side.n_layers - 1),
                     "slope": slope, "r2": r2, "gain": per_layer[best][-1] - per_layer[best][0]}
    return out


def _most_above_chance(curves: dict) -> int:
    above = [b - ch for b, ch in zip(curves["before"], curves["chance"])]
    return 1 + max(range(len(above)), key=above.__getitem__)


def verdicts(r) -> list[dict]:
    """One row per preprint claim: its number, emofast's, a verdict and why."""
    a, b = r.models
    c, k_max = r.pairs.curves, r.pairs.ks[-1]
    rows = []

    def add(claim, paper, ours, verdict, why):
        rows.append({"claim": claim, "preprint": paper, "emofast": ours, "verdict": verdict,
                     "why": why})
    collapse = {m.name: {p: _mean(m.stability[p].between.tolist()) for p in ("last", "mean")}
                for m in r.models}
    centred = {m.name: {p: _mean(m.stability[p].between_centred.tolist())
                        for p in ("last", "mean")} for m in r.models}
    add("sentence-final directions collapse onto each other (token-level ones do not)",
        "Pythia-70M: cosine 0.98+ between emotions",
        "; ".join(f"{n}: between-emotion cosine, mean over layers, last {x['last']:.2f}, "
                  f"token-level {x['mean']:.2f} (against the emotions' own mean: last "
                  f"{centred[n]['last']:.2f}, token-level {centred[n]['mean']:.2f})"
                  for n, x in collapse.items()),
        "reproduced" if all(x["last"] >= 0.9 and x["last"] > x["mean"] for x in collapse.values())
        else "not reproduced",
        "reproduced: last-token directions at cosine >= 0.9 on average and above the "
        "token-level ones, in both models; baseline: basic4's neutral sentences")
    stab = {m.name: (_late(m.stability["last"].split_half.mean(1).tolist()),
                     _late(m.stability["mean"].split_half.mean(1).tolist())) for m in r.models}
    add("token-level directions are stable", "stable across halves (no number given)",
        "; ".join(f"{n}: late-layer split-half cosine last {x:.2f}, token-level {y:.2f}"
                  for n, (x, y) in stab.items()),
        "reproduced" if all(y >= 0.8 and y >= x for x, y in stab.values()) else "not reproduced",
        "reproduced: token-level split-half >= 0.8 and >= sentence-final's, in both models")
    before1, p95_1 = c["before"][0], c["chance_p95"][0]
    add("1-D directions do not align across models", "no alignment at k = 1",
        f"k=1 overlap before any map {before1:.3f} (random 95th pct {p95_1:.3f})",
        "reproduced" if before1 <= p95_1 else "not reproduced",
        "no map: the two spaces are compared on shared coordinates (576 of 640); "
        "the preprint does not say how it compares unequal widths")
    bk = c["before"][-1]
    add(f"2-10-D subspaces share structure before alignment",
        "overlap 0.12-0.15 at k = 10, highest at k = 2",
        f"k={k_max}: {bk:.3f} (random {c['chance'][-1]:.3f}, 95th pct {c['chance_p95'][-1]:.3f})"
        f"; highest above chance at k = {_most_above_chance(c)}",
        "not reproduced" if bk <= c["chance_p95"][-1] else "reproduced",
        "on shared coordinates (the only comparison without a map): two models' coordinates "
        "share no basis; the preprint does not say how it compared unequal widths")
    gain = c["ridge"][-1] - bk
    add("a linear map fitted on neutral text aligns the emotion subspaces",
        "overlap gain +0.50 to +0.99",
        f"k={k_max}: ridge after {c['ridge'][-1]:.3f} (gain {gain:+.3f}); shuffled-pair map "
        f"{c['shuffled'][-1]:.3f}, so {c['ridge'][-1] - c['shuffled'][-1]:+.3f} over it",
        "reproduced" if gain >= 0.5 and c["ridge"][-1] - c["shuffled"][-1] >= 0.2
        else "not reproduced",
        "mean over depth-matched layer pairs; a map fitted on shuffled neutral pairs is the "
        "chance level of a map (its image favours high-variance directions)")
    add("rotation-only (Procrustes) alignment is moderate", "moderate gains",
        f"k={k_max}: Procrustes after {c['procrustes'][-1]:.3f} vs ridge {c['ridge'][-1]:.3f} "
        f"and the shuffled-pair map {c['shuffled'][-1]:.3f}",
        "reproduced" if c["shuffled"][-1] + 0.05 <= c["procrustes"][-1] < c["ridge"][-1]
        else "not reproduced",
        "moderate: at least 0.05 above the shuffled-pair map and below the ridge map")
    h = r.pairs.held_out
    add("held-out emotions (control)", "-",
        f"energy of the left-out emotion in the mapped subspace of the others "
        f"{_mean(h['mapped']):.3f} (shuffled map {_mean(h['shuffled_mapped']):.3f}, Y's own "
        f"{_mean(h['own']):.3f}, random {h['chance']:.3f}); nearest its own emotion "
        f"{h['identified']:.2f} (shuffled {h['shuffled_identified']:.2f}, chance "
        f"{1 / len(h['emotions']):.2f})",
        "-", f"k = E - 2 = {h['k']} subspace fitted without the emotion, mean over "
        "depth-matched layer pairs")
    for m in r.models:
        _model_verdicts(m, add)
    return rows


def _model_verdicts(m, add) -> None:
    """The per-model rows: injection linear in alpha, and layer 0 head 0."""
    s = _patch_summary(m)
    d, rnd = s["direction"], s["random"]
    add(f"{m.name}: tone moves linearly with alpha; random vectors do nothing",
        "linear in alpha, strongest at GPT-2 layer 7 of 12 (depth 0.64)",
        f"best layer {d['layer']} (depth {d['depth']:.2f}): judge gain {d['gain']:+.2f}, "
        f"R^2 {d['r2']:.2f}; random gain {rnd['gain']:+.2f}",
        "reproduced" if d["r2"] >= 0.8 and d["gain"] > 0.1 and abs(rnd["gain"]) < d["gain"] / 3
        else "not reproduced",
        "judge P(emotion), mean over the injected emotions; reproduced: R^2 >= 0.8, gain "
        "> 0.1 and the random gain under a third of it")
    ranks = m.heads.l0h0_rank
    add(f"{m.name}: layer 0 head 0 is singled out", "GPT-2 L0H0",
        "; ".join(f"{e}: L0H0 rank {k}, top {m.heads.top[e][0][:2]}" for e, k in ranks.items()),
        "reproduced" if all(k <= 3 for k in ranks.values()) else "not reproduced",
        "rank by |exact ablation effect| among all heads; reproduced: top 3 for every emotion")


def plots(out: Path, r) -> None:
    p = r.pairs
    curves = {"before (shared coordinates)": p.curves["before"], "ridge map": p.curves["ridge"],
              "Procrustes": p.curves["procrustes"], "shuffled-pair map": p.curves["shuffled"],
              "random subspaces": p.curves["chance"]}
    report.plot_layer_curves(out / "overlap_vs_k.png", p.ks, curves, xlabel="k",
                             ylabel="subspace overlap", ylim=(0, 1.02), mark_best=False,
                             title="emotion subspaces across the models (depth-matched pairs)")
    names = [m.name for m in r.models]
    for key in ("before", "ridge", "shuffled"):
        report.plot_heatmap(out / f"pairs_{key}.png", p.grid[key], [f"L{x}" for x in p.layers_x],
                            [f"L{y}" for y in p.layers_y], vmin=0, vmax=1,
                            title=f"overlap at k={p.ks[-1]}, {key}: {names[0]} rows, "
                                  f"{names[1]} columns")
    for m in r.models:
        L = list(range(m.n_layers))
        report.plot_layer_curves(
            out / f"stability_{_slug(m.name)}.png", L,
            {"split-half, last": m.stability["last"].split_half.mean(1).tolist(),
             "split-half, mean": m.stability["mean"].split_half.mean(1).tolist(),
             "between emotions, last": m.stability["last"].between.tolist(),
             "between emotions, mean": m.stability["mean"].between.tolist(),
             "between, centred, mean": m.stability["mean"].between_centred.tolist(),
             "probe, last": m.probe_acc["last"], "probe, mean": m.probe_acc["mean"]},
            ylabel="cosine / accuracy", ylim=(-0.5, 1.02), mark_best=False,
            title=f"{m.name}: direction stability, collapse and probe accuracy")
        pt = m.patching
        for name in ("direction", "random"):
            grid = torch.tensor(pt.judge[name]).mean(0).tolist()          # [layers, alphas]
            report.plot_heatmap(out / f"patch_{name}_{_slug(m.name)}.png", grid,
                                [f"L{x}" for x in pt.layers], [f"{a:g}" for a in pt.alphas],
                                vmin=0, vmax=1, title=f"{m.name}: judge P(emotion), {name} "
                                "injection (layer x rms alpha)")
        eff = torch.tensor(m.heads.effect).abs().mean(0)                   # [L, H]
        report.plot_heatmap(out / f"heads_{_slug(m.name)}.png", eff, [str(x) for x in L],
                            [f"H{h}" for h in range(eff.shape[1])], fmt="{:.1f}",
                            title=f"{m.name}: |head ablation effect|, mean over "
                                  f"{', '.join(m.heads.emotions)}")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def write_index(out: Path, r) -> None:
    S, T = report.Section, report.Table
    v = T(["claim", "preprint", "emofast", "verdict", "why"],
          [[x["claim"], x["preprint"], x["emofast"], x["verdict"], x["why"]] for x in r.verdicts])
    sections = [
        S("The preprint beside emofast", f"{r.n_texts['emotion']} emotion texts of "
          f"{len(r.emotions)} emotions and {r.n_texts['neutral']} neutral texts, the same for "
          f"both models ({', '.join(m.name for m in r.models)}).", table=v),
        S("Emotion subspaces across the models", "Top-k PCA axes of the emotion texts' "
          "token-level activations; overlap = mean cos^2 of the principal angles. Maps are fitted "
          "on neutral text only.", images=["overlap_vs_k.png", "pairs_before.png",
                                          "pairs_ridge.png", "pairs_shuffled.png"]),
        S("Within each model", images=[f"stability_{_slug(m.name)}.png" for m in r.models]),
        S("Direction injection", "Unit emotion direction (or a random unit direction) added "
          "at one layer's resid_post, every position, alpha x rms(h).",
          images=[f"patch_{n}_{_slug(m.name)}.png" for m in r.models
                  for n in ("direction", "random")]),
        S("Head screen", "Exact zero ablation of every head (batched sweep engine).",
          images=[f"heads_{_slug(m.name)}.png" for m in r.models]),
        S("Timing", table=T(["stage", "seconds"], [[k, x] for k, x in r.stage_s.items()]))]
    report.write_index(out, "emofast crossmodel", sections)
