"""Does late-layer quantization disproportionately degrade emotion features? The test.

    test = brittleness_test(results, headline_bits=3)      # results: ArmResult per arm
    test["verdict"]                                        # one sentence, with its numbers

For each emotion metric (higher = healthier, `profile.EMOTION_METRICS`) at the headline bit
width: the random layer sets of a third's size (the null) fit metric ~ a + b log(output KL on
general text); each third's residual from that fit is its loss beyond what the null loses at the
same KL (depth confounds KL: an early error passes through more layers). Late is tested against
the null's leave-one-out residuals (one-sided permutation p, and the t prediction-interval p that
is not limited to multiples of 1 / (n_null + 1)), Holm-adjusted within each family of metrics
(the SAE emotion-feature metrics PRIMARY, which the claim is about; directions and probes);
bootstrap
(over the null arms, refitting) gives 95% intervals of the late residual and of late minus early
and late minus middle. The claim holds for a metric when late's Holm-adjusted permutation p is
below alpha and both differences' intervals lie below 0. The other direction is tested the same
way for the early third (published work finds early layers hold super weights and massive
activations). Each metric's split-half reliability over all arms is reported beside it.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

from .profile import EMOTION_METRICS, ArmResult
from .stats import (bootstrap_ci, holm, interpolate_log, kl_fit, loo_residuals, permutation_p,
                    prediction_p, spearman_brown)

PRIMARY = ("feature_r_emotion", "feature_survival_emotion", "feature_r_specific")
KL_KEY = "kl_general"


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def brittleness_test(results: Sequence[ArmResult], *, headline_bits: int,
                     metrics: Sequence[str] = EMOTION_METRICS, alpha: float = 0.05,
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """See the module docstring; returns a JSON-ready dict with "verdict"."""
    null = [r for r in results if r.arm.kind == "random" and r.arm.bits == headline_bits]
    third = {r.arm.region: r for r in results
             if r.arm.kind == "region" and r.arm.bits == headline_bits}
    if len(null) < 3 or set(third) != {"early", "middle", "late"}:
        raise ValueError(f"the test needs >= 3 random arms and the three thirds at rtn"
                         f"{headline_bits}: got {len(null)} random arms and thirds "
                         f"{sorted(third)}")
    x_null = [r.metrics[KL_KEY] for r in null]
    rows = {}
    for m in metrics:
        y_null = [r.metrics[m] for r in null]
        fit = kl_fit(x_null, y_null)
        res = {k: fit.residual(r.metrics[KL_KEY], r.metrics[m]) for k, r in third.items()}
        loo = loo_residuals(x_null, y_null)

        def boot(what):
            def stat(idx):
                f = kl_fit([x_null[i] for i in idx], [y_null[i] for i in idx])
                rr = {k: f.residual(r.metrics[KL_KEY], r.metrics[m]) for k, r in third.items()}
                return what(rr)
            return bootstrap_ci(stat, len(null), n_boot=n_boot, seed=seed)
        rows[m] = {
            "null_fit": {"a": fit.a, "b_per_log_kl": fit.b}, "residual": res,
            "null_residual_sd": statistics.stdev(loo), "null_residuals": loo,
            "p_late": permutation_p(res["late"], loo), "p_late_t": prediction_p(res["late"], loo),
            "p_early": permutation_p(res["early"], loo),
            "p_early_t": prediction_p(res["early"], loo),
            "ci_late": boot(lambda r: r["late"]),
            "ci_late_minus_early": boot(lambda r: r["late"] - r["early"]),
            "ci_late_minus_middle": boot(lambda r: r["late"] - r["middle"]),
            "reliability": spearman_brown([r.halves[m][0] for r in results if m in r.halves],
                                          [r.halves[m][1] for r in results if m in r.halves])}
    families = [[m for m in metrics if m in PRIMARY], [m for m in metrics if m not in PRIMARY]]
    for family in families:
        for key in ("p_late", "p_late_t", "p_early", "p_early_t"):
            for m, adj in zip(family, holm([rows[m][key] for m in family]) if family else []):
                rows[m][key + "_holm"] = adj
    for m in metrics:
        r = rows[m]
        r["holds"] = bool(r["p_late_holm"] < alpha and r["ci_late_minus_early"][1] < 0
                          and r["ci_late_minus_middle"][1] < 0)
        r["other_way"] = bool(r["p_early_holm"] < alpha)
    out = {"headline_bits": headline_bits, "n_null": len(null), "alpha": alpha,
           "null_kl_range": [min(x_null), max(x_null)],
           "third_kl": {k: r.metrics[KL_KEY] for k, r in third.items()},
           "smallest_possible_p": 1 / (len(null) + 1),
           "families": families,
           "smallest_possible_holm_p": min(1.0, max(len(f) for f in families) / (len(null) + 1)),
           "metrics": rows, "matched_kl": matched_kl(results, metrics),
           "noise_control": noise_control(results, metrics)}
    out["verdict"] = _verdict(out, [m for m in PRIMARY if m in rows] or list(metrics))
    return out


def matched_kl(results: Sequence[ArmResult], metrics: Sequence[str]) -> dict:
    """Each third's metric interpolated (in log KL, across its bit widths) at the KL of every
    other third's arms: the comparison at matched output KL without the null's fit."""
    curves = {}
    for r in results:
        if r.arm.kind == "region":
            curves.setdefault(r.arm.region, []).append(r)
    points = sorted({round(r.metrics[KL_KEY], 6) for v in curves.values() for r in v})
    table = {}
    for m in metrics:
        table[m] = {region: [interpolate_log([r.metrics[KL_KEY] for r in v],
                                             [r.metrics[m] for r in v], kl) for kl in points]
                    for region, v in curves.items()}
    return {"kl": points, "by_metric": table}


def noise_control(results: Sequence[ArmResult], metrics: Sequence[str]) -> dict:
    """Per Gaussian-noise arm: its output KL and metrics beside the quantized arm whose error
    it matches (same weights, same error RMS): is quantization error worse than noise?"""
    by_name = {r.arm.name: r for r in results}
    out = {}
    for r in results:
        if r.arm.kind == "noise" and r.arm.noise_of in by_name:
            q = by_name[r.arm.noise_of]
            out[r.arm.noise_of] = {m: {"quantized": q.metrics[m], "noise": r.metrics[m]}
                                   for m in (KL_KEY, *metrics)}
    return out


def _verdict(t: dict, primary: list[str]) -> str:
    rows, k = t["metrics"], t["headline_bits"]
    held = [m for m in primary if rows[m]["holds"]]
    m = held[0] if held else min(primary, key=lambda m: rows[m]["p_late_t"])
    r = rows[m]
    nums = (f"{m} residual of the late third at rtn{k} {_fmt(r['residual']['late'])} (95% CI "
            f"{_fmt(r['ci_late'][0])} to {_fmt(r['ci_late'][1])}) against {t['n_null']} random "
            f"layer sets at matched output KL, permutation p {r['p_late']:.3f} (Holm "
            f"{r['p_late_holm']:.3f}), t p {r['p_late_t']:.3g}; late minus early "
            f"{_fmt(r['residual']['late'] - r['residual']['early'])} (95% CI "
            f"{_fmt(r['ci_late_minus_early'][0])} to {_fmt(r['ci_late_minus_early'][1])}), late "
            f"minus middle {_fmt(r['residual']['late'] - r['residual']['middle'])}")
    if held:
        return ("Supported: late-layer quantization disproportionately degrades emotion "
                f"features ({nums}).")
    e = min(primary, key=lambda x: rows[x]["p_early_t"])
    re_ = rows[e]
    side = ("the evidence points the other way, to the early third" if
            re_["p_early_t_holm"] < t["alpha"] else "the early third")
    early = (f"; {side}: {e} residual {_fmt(re_['residual']['early'])}, permutation p "
             f"{re_['p_early']:.3f}, t p {re_['p_early_t']:.3g} (Holm {re_['p_early_t_holm']:.3g})")
    why = ""
    if t["smallest_possible_holm_p"] >= t["alpha"]:
        why = (f"; with {t['n_null']} null arms no Holm-adjusted permutation p can fall below "
               f"{t['smallest_possible_holm_p']:.3f}, so this preset cannot establish either "
               "claim by permutation")
    return ("Not supported: late-layer quantization does not disproportionately degrade "
            f"emotion features ({nums}{early}{why}).")
