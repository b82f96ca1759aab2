"""Measure quantized arms against the reference on general and emotion text.

    data = prepare(model, general_texts, emotion_examples, saes)        # the reference, once
    result = measure(quantized, data, arm)                             # per arm -> ArmResult

Per arm (`emofast.quant.metrics`, `emofast.quant.survival`): output statistics on each text set,
residual drift per layer (with and without the massive dimensions), the frozen reference SAEs'
feature survival (emotion features against matched random ones), re-derived emotion directions
against the reference's (and the reference's own split-half ceiling), and the reference probe
frozen and refit. `ArmResult.metrics` flattens the headline numbers; `ArmResult.halves` holds
each of them recomputed on two disjoint halves of the texts (their split-half reliability over
arms is `stats.spearman_brown`). The SAE statistics leave out each text's first token (the
attention sink, which the SAEs were not trained on).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data import Example
from ..models import Model
from ..sae import SAE
from ..sites import parse_site
from .apply import quant_info
from .arms import Arm
from .metrics import (direction_cosines, drift, halves, massive_dims, output_stats,
                      probe_accuracy, reference_probes, split_half_ceiling, text_means)
from .passes import Pass, arm_pass, reference_pass
from .survival import ChosenFeatures, choose_features, sae_acts, survival

# higher = healthier; the emotion metrics the brittleness test asks about
EMOTION_METRICS = ("feature_r_emotion", "feature_survival_emotion", "feature_r_specific",
                   "direction_cosine", "probe_frozen", "probe_refit")


@dataclass
class ProfileData:
    general: Pass
    emotion: Pass
    labels: list[str]                      # per emotion text
    saes: list[SAE]
    sae_ref: dict[str, torch.Tensor]       # site -> [n_sae_tokens, d_sae]
    chosen: ChosenFeatures
    massive: list[int]
    resid: torch.Tensor                    # [L, n_general + n_emotion, d] reference residuals
    layers: list[int]                      # direction and probe layers
    means: torch.Tensor                    # [L, N_emotion, d] reference text means
    ceiling: list[float]                   # per direction layer: split-half cosine, mean over E
    text_halves: tuple[list[int], list[int]]
    probes: tuple[list, list]              # reference probes fitted on half a, on half b
    token_halves: dict[str, tuple[torch.Tensor, torch.Tensor]]   # "general"/"emotion"/"sae"
    threshold: float = 0.9
    seconds: float = 0.0


@dataclass
class ArmResult:
    arm: Arm
    info: dict
    general: dict
    emotion: dict
    drift: dict
    survival: dict
    directions: dict
    probes: dict
    metrics: dict[str, float]
    halves: dict[str, list[float]]
    seconds: float

    def to_json(self) -> dict:
        return {"arm": self.arm.to_json(), "info": {k: v for k, v in self.info.items()
                                                    if k != "changed"},
                "general": self.general, "emotion": self.emotion, "drift": self.drift,
                "survival": self.survival, "directions": self.directions, "probes": self.probes,
                "metrics": self.metrics, "halves": self.halves, "seconds": self.seconds}


def _sae_rows(p: Pass) -> torch.Tensor:
    return ~p.tokens.first


def _token_halves(p: Pass, a: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    in_a = torch.zeros(p.tokens.n_texts, dtype=torch.bool)
    in_a[list(a)] = True
    mask = in_a[p.tokens.text]
    return mask, ~mask


def _sae_inputs(p_general: Pass, p_emotion: Pass) -> dict[str, torch.Tensor]:
    rg, re_ = _sae_rows(p_general), _sae_rows(p_emotion)
    return {s: torch.cat([p_general.sites[s][rg], p_emotion.sites[s][re_]])
            for s in p_general.sites}


def prepare(model: Model, general: Sequence[str], examples: Sequence[Example],
            saes: Sequence[SAE], *, layers: Sequence[int] | None = None,
            per_emotion: int = 4, min_active: int = 5, threshold: float = 0.9,
            massive_ratio: float = 100.0, batch_size: int = 8, seed: int = 0,
            progress: bool = True) -> ProfileData:
    """The reference side of every arm's comparison (module docstring). layers: where
    directions and probes are read (default: the SAEs' layers)."""
    t0 = time.perf_counter()
    saes = list(saes)
    sites = sorted({s.site for s in saes})
    labels = [ex.label for ex in examples]
    if len(set(labels)) < 2:
        raise ValueError("the emotion texts need at least two emotions")
    if layers is None:   # the SAEs' layers, else six spread over the depth
        layers = sorted({parse_site(s).layer for s in sites}) or sorted(
            {round(i * (model.n_layers - 1) / 5) for i in range(6)})
    layers = list(layers)
    if not layers:
        raise ValueError("no direction layers: give layers or SAEs")
    g = reference_pass(model, general, sites, batch_size=batch_size, progress=progress)
    e = reference_pass(model, [ex.text for ex in examples], sites, batch_size=batch_size,
                       progress=progress)
    sae_ref = sae_acts(saes, _sae_inputs(g, e))
    # per SAE token: the text it belongs to, general texts first, then the emotion texts
    n_g = g.tokens.n_texts
    text = torch.cat([g.tokens.text[_sae_rows(g)], e.tokens.text[_sae_rows(e)] + n_g])
    chosen = choose_features(sae_ref, text, [None] * n_g + labels, per_emotion=per_emotion,
                             min_active=min_active, seed=seed)
    a, b = halves(labels, seed)
    ga = list(range(0, n_g, 2))
    tok = {"general": _token_halves(g, ga), "emotion": _token_halves(e, a)}
    tok["sae"] = tuple(torch.cat([tg[_sae_rows(g)], te[_sae_rows(e)]])
                       for tg, te in zip(tok["general"], tok["emotion"]))
    means = text_means(e, range(model.n_layers))
    ceiling = split_half_ceiling(means[layers], labels, layers).mean(-1).tolist()
    resid = torch.cat([g.resid, e.resid], 1)
    return ProfileData(g, e, labels, saes, sae_ref, chosen, massive_dims(resid, massive_ratio),
                       resid, layers,
                       means, ceiling, (a, b),
                       tuple(reference_probes(means[layers], labels, h, seed) for h in (a, b)),
                       tok, threshold, time.perf_counter() - t0)


def measure(model: Model, data: ProfileData, arm: Arm, *, progress: bool = False) -> ArmResult:
    """One arm against the reference (module docstring); `model` is the quantized Model."""
    t0 = time.perf_counter()
    g = arm_pass(model, data.general, progress=progress)
    e = arm_pass(model, data.emotion, progress=progress)
    out_g, out_e = output_stats(data.general, g), output_stats(data.emotion, e)
    dr = drift(data.resid, torch.cat([g.resid, e.resid], 1), data.massive)
    sae_arm = sae_acts(data.saes, _sae_inputs(g, e))
    surv, sae_a, sae_b = survival(data.sae_ref, sae_arm, data.chosen,
                                  torch.stack([torch.ones_like(data.token_halves["sae"][0]),
                                               *data.token_halves["sae"]]), data.threshold)
    means = text_means(e, data.layers)
    ref_means = data.means[data.layers]
    a, b = data.text_halves
    cos = direction_cosines(ref_means, means, data.labels, data.layers)       # [l, E]
    cos_a = direction_cosines(ref_means, means, data.labels, data.layers, a).mean()
    cos_b = direction_cosines(ref_means, means, data.labels, data.layers, b).mean()
    p_ab = probe_accuracy(data.probes[0], ref_means, means, data.labels, a, b)
    p_ba = probe_accuracy(data.probes[1], ref_means, means, data.labels, b, a)
    probes = {k: [(x + y) / 2 for x, y in zip(p_ab[k], p_ba[k])] for k in p_ab}

    def mean(v):
        return float(torch.tensor(v, dtype=torch.float64).mean())
    pooled = surv["pooled"]
    metrics = {"kl_general": out_g["kl_mean"], "kl_emotion": out_e["kl_mean"],
               "same_top_general": out_g["same_top"], "ppl_change_general": out_g["ppl_change"],
               "feature_r_emotion": pooled["r_emotion"],
               "feature_survival_emotion": pooled["survival_emotion"],
               "feature_r_matched": pooled["r_matched"],
               "feature_survival_matched": pooled["survival_matched"],
               "feature_survival_all": pooled["survival_all"],
               "feature_r_specific": pooled["r_emotion"] - pooled["r_matched"],
               "peak_vs_r_spearman": surv["peak_vs_r_spearman"],
               "direction_cosine": float(cos.mean()), "probe_frozen": mean(probes["frozen"]),
               "probe_refit": mean(probes["refit"]), "drift_last": dr["rel_l2"][-1]}
    hv = {}
    for key, half in (("kl_general", "general"), ("kl_emotion", "emotion")):
        hv[key] = [output_stats(data.general if half == "general" else data.emotion,
                                g if half == "general" else e, m)["kl_mean"]
                   for m in data.token_halves[half]]
    sae_h = [sae_a["pooled"], sae_b["pooled"]]
    hv["feature_r_emotion"] = [s["r_emotion"] for s in sae_h]
    hv["feature_survival_emotion"] = [s["survival_emotion"] for s in sae_h]
    hv["feature_r_specific"] = [s["r_emotion"] - s["r_matched"] for s in sae_h]
    hv["direction_cosine"] = [float(cos_a), float(cos_b)]
    hv["probe_frozen"] = [mean(p_ab["frozen"]), mean(p_ba["frozen"])]
    hv["probe_refit"] = [mean(p_ab["refit"]), mean(p_ba["refit"])]
    info = quant_info(model)
    return ArmResult(arm, {} if info is None else info.to_json(), out_g, out_e, dr, surv,
                     {"layers": data.layers, "cosine": cos.mean(-1).tolist(),
                      "ceiling": data.ceiling}, {"layers": data.layers, **probes},
                     metrics, hv, round(time.perf_counter() - t0, 2))
