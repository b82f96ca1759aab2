"""Do the reference's SAE features survive quantization? Frozen SAEs read both models' tokens.

    chosen = choose_features(saes, ref_acts, text_of_token, labels)   # once, on the reference
    r = feature_correlations(saes, ref_acts, arm_acts)                # per arm: Pearson r [F]
    survival(r, chosen, threshold=0.9)

Per SAE, a feature is *active* when it fires on at least `min_active` tokens of the reference.
Its *peak* is its largest reference activation, its *frequency* the share of tokens it fires on.
*Emotion features*: per emotion, the `per_emotion` active features of highest one-vs-rest AUROC
of their per-text maximum on the emotion texts (the flow analysis' selectivity). *Matched random
features*: for each emotion feature, an active non-emotion feature among the 5 nearest in
(log peak, log frequency), standardised, drawn at random without replacement: peak activation
predicts survival, so the comparison holds it fixed. A feature *survives* an arm when the Pearson
r between its reference and arm activations over the same tokens is at least the threshold (a
feature silent on the arm's side has r = 0).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from ..analysis.feature_flow import auroc, average_ranks
from ..discovery.attribution import spearman
from ..sae import SAE

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class ChosenFeatures:
    active: dict[str, torch.Tensor]     # site -> [d_sae] bool
    peak: dict[str, torch.Tensor]       # site -> [d_sae]
    frequency: dict[str, torch.Tensor]  # site -> [d_sae]
    emotion: dict[str, list[int]]       # site -> emotion feature ids
    matched: dict[str, list[int]]       # site -> matched random ids, same order
    emotion_of: dict[str, list[str]]    # site -> the emotion each emotion feature was chosen for

    def to_json(self) -> dict:
        return {s: {"n_active": int(self.active[s].sum()), "emotion": self.emotion[s],
                    "emotion_of": self.emotion_of[s], "matched": self.matched[s],
                    "emotion_peak": self.peak[s][self.emotion[s]].tolist(),
                    "matched_peak": self.peak[s][self.matched[s]].tolist(),
                    "emotion_frequency": self.frequency[s][self.emotion[s]].tolist(),
                    "matched_frequency": self.frequency[s][self.matched[s]].tolist()}
                for s in self.emotion}


@torch.inference_mode()
def sae_acts(saes: Sequence[SAE], sites: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense activations [n, d_sae] of each SAE on its site's activations [n, d_in]."""
    out = {}
    for sae in saes:
        x = sites[sae.site].to(sae.W_enc.device)
        out[sae.site] = torch.cat([sae.dense(sae.encode(x[i:i + 4096])).float().cpu()
                                   for i in range(0, len(x), 4096)])
    return out


def choose_features(acts: dict[str, torch.Tensor], text_of_token: torch.Tensor,
                    labels: Sequence[str | None], *, per_emotion: int = 4, min_active: int = 5,
                    seed: int = 0) -> ChosenFeatures:
    """See the module docstring. acts: site -> [n, d_sae] reference activations of every
    token (those of emotion texts and others); labels: per text its emotion, or None for a text
    that only counts for activity (general text)."""
    out = ChosenFeatures({}, {}, {}, {}, {}, {})
    emotions = sorted({x for x in labels if x is not None})
    emo_texts = torch.tensor([i for i, x in enumerate(labels) if x is not None])
    y = [labels[i] for i in emo_texts.tolist()]
    rng = random.Random(seed)
    for site, a in acts.items():
        fired = (a > 0).sum(0)
        active = fired >= min_active
        peak, freq = a.amax(0), fired.double() / len(a)
        # per-text maximum over the emotion texts' tokens -> [N_emo, d_sae]
        per_text = torch.zeros(len(labels), a.shape[1]).scatter_reduce_(
            0, text_of_token[:, None].expand_as(a), a, "amax", include_self=False)[emo_texts]
        ranks = average_ranks(per_text)
        chosen, of = [], []
        for e in emotions:
            au = auroc(ranks, torch.tensor([lab == e for lab in y]))
            au[~active] = -1
            au[chosen] = -1
            for f in au.topk(per_emotion).indices.tolist():
                if au[f] > 0.5:
                    chosen.append(f)
                    of.append(e)
        pool = (active.clone().index_fill_(0, torch.tensor(chosen, dtype=torch.long), False)
                if chosen else active.clone())
        z = torch.stack([peak.clamp_min(1e-12).log(), freq.clamp_min(1e-12).log()], -1).float()
        z = (z - z[active].mean(0)) / z[active].std(0).clamp_min(1e-12)
        matched = []
        for f in chosen:
            cand = pool.nonzero().squeeze(-1)
            if not len(cand):
                raise ValueError(f"{site}: too few active features to match {len(chosen)} "
                                 "emotion features at random; lower per_emotion")
            near = cand[(z[cand] - z[f]).norm(dim=-1).argsort()[:5]].tolist()
            pick = rng.choice(near)
            matched.append(pick)
            pool[pick] = False
        out.active[site], out.peak[site], out.frequency[site] = active, peak, freq
        out.emotion[site], out.matched[site], out.emotion_of[site] = chosen, matched, of
    return out


def pearson(x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Per-column Pearson r of x, y [n, F]; 0 where either column is constant. groups [G, n]
    (bool or 0/1) gives r within each group of rows at once -> [G, F] (else [F]): one matmul
    of the groups with the five per-row moments, the sums in fp32, r in fp64."""
    G = torch.ones(1, len(x)) if groups is None else groups.float()
    x, y = x.float(), y.float()
    sx, sy, sxx, syy, sxy = ((G @ m).double() for m in (x, y, x * x, y * y, x * y))
    n = G.sum(1).double()[:, None]
    cov = sxy - sx * sy / n
    vx, vy = (sxx - sx * sx / n).clamp(min=0), (syy - sy * sy / n).clamp(min=0)
    den = (vx * vy).sqrt()
    # a variance lost to fp32 cancellation counts as constant
    ok = (vx > 1e-6 * sxx) & (vy > 1e-6 * syy) & (den > 0)
    r = torch.where(ok, cov / den.clamp_min(1e-300), torch.zeros_like(den)).clamp(-1, 1)
    return r[0] if groups is None else r


def survival(ref_acts: dict[str, torch.Tensor], arm_acts: dict[str, torch.Tensor],
             chosen: ChosenFeatures, groups: torch.Tensor | None = None,
             threshold: float = 0.9) -> list[dict]:
    """Per SAE and pooled over SAEs: the share of active features with r >= threshold, the
    share of emotion features and of their matched random features that survive, their mean r,
    and the active share surviving at each of THRESHOLDS. groups [G, n] (default: all tokens)
    -> one result per group of tokens."""
    rs = {site: pearson(ref, arm_acts[site], groups if groups is not None else
                        torch.ones(1, len(ref), dtype=torch.bool)).float()
          for site, ref in ref_acts.items()}        # no SAEs: every share is nan
    out = []
    n_groups = 1 if groups is None else len(groups)
    for g in range(n_groups):
        per_site, pooled = {}, {"all": [], "emotion": [], "matched": []}
        for site, r in rs.items():
            r = r[g]
            sets = {"all": r[chosen.active[site]], "emotion": r[chosen.emotion[site]],
                    "matched": r[chosen.matched[site]]}
            for k, v in sets.items():
                pooled[k].append(v)
            per_site[site] = _summary(sets, threshold)
        out.append({"threshold": threshold,
                    "pooled": _summary({k: torch.cat(v) if v else torch.zeros(0)
                                        for k, v in pooled.items()}, threshold),
                    "per_site": per_site,
                    "peak_vs_r_spearman": _peak_vs_r({s: r[g] for s, r in rs.items()},
                                                     chosen)})
    return out


def _peak_vs_r(rs: dict[str, torch.Tensor], chosen: ChosenFeatures) -> float:
    """Spearman correlation, over the active features of every SAE, of log peak activation
    (relative to the SAE's median active peak) with the feature's r: does peak predict
    survival?"""
    peak, r = [], []
    for site, v in rs.items():
        act = chosen.active[site]
        p = chosen.peak[site][act].clamp_min(1e-12).log()
        peak.append(p - p.median())
        r.append(v[act])
    if not peak or sum(len(x) for x in peak) < 3:
        return float("nan")
    return spearman(torch.cat(peak), torch.cat(r))


def _summary(groups: dict[str, torch.Tensor], threshold: float) -> dict:
    def share(v, t):
        return float((v >= t).float().mean()) if len(v) else float("nan")
    return {"survival_all": share(groups["all"], threshold),
            "survival_emotion": share(groups["emotion"], threshold),
            "survival_matched": share(groups["matched"], threshold),
            "r_emotion": float(groups["emotion"].mean()) if len(groups["emotion"]) else float("nan"),
            "r_matched": float(groups["matched"].mean()) if len(groups["matched"]) else float("nan"),
            "r_all_median": float(groups["all"].median()) if len(groups["all"]) else float("nan"),
            "curve_all": [share(groups["all"], t) for t in THRESHOLDS],
            "n_emotion": len(groups["emotion"]), "n_active": len(groups["all"])}
