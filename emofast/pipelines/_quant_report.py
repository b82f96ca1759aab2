"""The report of `emofast quant profile` (emofast.pipelines.quant): its PNGs and index.html."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import report
from ..quant.verdict import KL_KEY, PRIMARY

SHOWN = PRIMARY + ("direction_cosine", "probe_frozen")


def _log_kl(x: float) -> float:
    return math.log10(max(x, 1e-6))


def _center(arm) -> float | None:
    return None if arm.layers is None else sum(arm.layers) / len(arm.layers)


def write_plots(out: Path, r) -> None:
    """The PNGs of a QuantResult `r`."""
    whole = [a for a in r.arms if a.arm.kind == "whole" and a.info.get("bits_per_weight")]
    if whole:
        report.plot_scatter_2d(
            out / "kl_vs_bits.png",
            torch.tensor([[a.info["bits_per_weight"], _log_kl(a.metrics[KL_KEY])] for a in whole]),
            [a.arm.name for a in whole], title="whole-model arms: output KL vs storage",
            xlabel="bits per weight", ylabel="log10 mean next-token KL (general text)")
    kinds = [a for a in r.arms if a.arm.kind != "null_check"]
    for m in SHOWN:
        report.plot_scatter_2d(
            out / f"vs_kl_{m}.png",
            torch.tensor([[_log_kl(a.metrics[KL_KEY]), a.metrics[m]] for a in kinds]),
            [a.arm.kind if a.arm.kind != "region" else f"{a.arm.region} third"
             for a in kinds], title=f"{m} against output KL, every arm",
            xlabel="log10 mean next-token KL (general text)", ylabel=m)
    regions = [a for a in r.arms if a.arm.kind == "region"]
    if regions:
        report.plot_bars(out / "survival.png", [a.arm.name for a in regions],
                         {k: [a.metrics[f"feature_survival_{k}"] for a in regions]
                          for k in ("emotion", "matched", "all")},
                         title=f"SAE features surviving (r >= {r.config.threshold}): emotion "
                         "features vs matched random", ylabel="share surviving")
        heads = [a for a in regions if a.arm.bits == r.config.headline]
        layers = list(range(len(heads[0].drift["rel_l2"]))) if heads else []
        if heads:
            curves = {}
            for a in heads:
                curves[a.arm.name] = a.drift["rel_l2"]
                curves[f"{a.arm.name} (no massive)"] = a.drift["rel_l2_no_massive"]
            report.plot_layer_curves(out / "drift.png", layers, curves, ylabel="relative L2 "
                                     "drift of the residual", ylim=None, mark_best=False,
                                     title="residual drift per layer, thirds at "
                                     f"rtn{r.config.headline}")
    if r.test is None:
        return
    for m in SHOWN:
        row = r.test["metrics"][m]
        report.plot_distribution(out / f"null_{m}.png", row["null_residuals"],
                                 {f"{k} third": v for k, v in row["residual"].items()},
                                 title=f"{m}: residual at matched KL, random-layer null",
                                 xlabel="metric minus the null's fit at the arm's KL")
        fit = row["null_fit"]
        lo, hi = r.test["null_kl_range"]
        located = [a for a in r.arms if a.arm.kind in ("window", "single", "region")
                   and a.arm.bits == r.config.headline]
        xs = sorted({_center(a.arm) for a in located})
        curves = {}
        for kind in ("window", "single", "region"):
            pts = {_center(a.arm): a.metrics[m] - fit["a"] - fit["b_per_log_kl"] * math.log(
                max(a.metrics[KL_KEY], 1e-12)) for a in located if a.arm.kind == kind}
            if pts:
                curves[kind] = [pts.get(x, float("nan")) for x in xs]
        if curves:
            report.plot_layer_curves(out / f"by_layer_{m}.png", xs, curves, ylim=None,
                                     xlabel="centre of the quantized layers",
                                     ylabel="residual at matched KL", mark_best=False,
                                     title=f"{m} by layer range at matched output KL "
                                     f"(rtn{r.config.headline}; 0 = the random null, fit on "
                                     f"KL {lo:.2g}-{hi:.2g}: beyond it, extrapolated)")


def _num(x):
    return "-" if x is None else x


def write_index(out: Path, r) -> None:
    """DIR/index.html of a QuantResult `r`."""
    S, T = report.Section, report.Table
    arm_rows = [[a.arm.name, a.arm.kind, _num(a.info.get("bits_per_weight")),
                 a.general["kl_mean"], a.general["kl_median"], a.general["kl_p99"],
                 a.general["ppl_change"], a.general["same_top"], a.emotion["kl_mean"],
                 a.drift["rel_l2"][-1], a.drift["rel_l2_no_massive"][-1]] for a in r.arms]
    emo_rows = [[a.arm.name, *[a.metrics[k] for k in
                               ("feature_survival_all", "feature_survival_emotion",
                                "feature_survival_matched", "feature_r_emotion",
                                "feature_r_matched", "direction_cosine", "probe_frozen",
                                "probe_refit")], a.seconds] for a in r.arms]
    ref = r.reference
    sections = [S("Verdict", (r.test or {}).get("verdict", "no test: the region and random "
                                                "arms were not both run"))]
    null = [a for a in r.arms if a.arm.kind == "null_check"]
    if null:
        a = null[0]
        sections.append(S("Null check", f"{a.arm.name}: re-quantizing every linear to Q4_1 "
                          "(a null for the embedded SmolLM2, whose weights are Q4_1 values): "
                          f"mean KL "
                          f"{a.general['kl_mean']:.3g} nats, same top token "
                          f"{a.general['same_top']:.4f}, feature survival "
                          f"{a.metrics['feature_survival_all']:.3f}."))
    sections += [
        S("Output and drift per arm", f"Against the reference on {ref['n_texts_general']} "
          f"general paragraphs ({ref['n_tokens_general']} tokens) and {ref['n_texts_emotion']} "
          f"emotion texts ({ref['n_tokens_emotion']} tokens). KL(reference || arm) per token, "
          "nats; drift: relative L2 of the last layer's residual, with and without the "
          f"massive dimensions {ref['massive_dims']}.",
          table=T(["arm", "kind", "bits/w", "KL mean", "KL median", "KL p99", "ppl x",
                   "same top", "KL emotion", "drift", "drift (no massive)"], arm_rows),
          images=["kl_vs_bits.png", "drift.png"]),
        S("Emotion metrics per arm", f"SAE features of the frozen reference set "
          f"({', '.join(ref['sae_sites']) or 'none found'}) surviving at Pearson r >= "
          f"{r.config.threshold}: all active, emotion features and matched random features "
          "(peak activation and frequency); re-derived direction cosine (reference split-half "
          f"ceiling per layer {[round(c, 3) for c in ref['direction_ceiling']]}); probe "
          "accuracy frozen and refit (2-fold).",
          table=T(["arm", "surv all", "surv emotion", "surv matched", "r emotion",
                   "r matched", "dir cos", "probe frozen", "probe refit", "s"], emo_rows),
          images=["survival.png"] + [f"vs_kl_{m}.png" for m in SHOWN])]
    sections += _test_and_deep(r)
    if r.anchors:
        sections.append(S("Beside llama.cpp's anchors", "llama.cpp perplexity --kl-divergence "
                          "on Llama-3-8B (mean KLD) next to emofast's whole-model arms on "
                          "SmolLM2-135M; a different model, text and reference: scale only.",
                          table=T(["emofast arm", "bits/w", "KL mean", "KL p99", "same top",
                                   "llama.cpp", "Llama-3-8B KL"],
                                  [list(a.values()) for a in r.anchors])))
    report.write_index(out, f"emofast quant profile: {r.model}", sections)


def _test_and_deep(r) -> list:
    """The sections of the test at matched KL and of the deep arms."""
    S, T = report.Section, report.Table
    out = []
    if r.test is not None:
        t = r.test
        rows = [[m, v["residual"]["early"], v["residual"]["middle"], v["residual"]["late"],
                 f"{v['ci_late'][0]:+.3f} .. {v['ci_late'][1]:+.3f}", v["p_late"],
                 v["p_late_holm"], v["p_late_t"], v["p_early"], v["reliability"],
                 "yes" if v["holds"] else "no", "yes" if v["other_way"] else "no"]
                for m, v in t["metrics"].items()]
        out.append(S("The test at matched output KL", f"rtn{t['headline_bits']}, "
                          f"{t['n_null']} random layer sets as the null (smallest possible "
                          f"permutation p {t['smallest_possible_p']:.3f}). Residual: the "
                          "metric minus the null's fit a + b log KL at the arm's KL (the null "
                          f"spans KL {t['null_kl_range'][0]:.3f} to {t['null_kl_range'][1]:.3f}; "
                          f"the thirds sit at {', '.join(f'{k} {v:.3f}' for k, v in t['third_kl'].items())}).",
                          table=T(["metric", "early", "middle", "late", "late 95% CI",
                                   "p late", "Holm", "t p", "p early", "reliability",
                                   "holds", "other way"], rows),
                          images=[f"null_{m}.png" for m in SHOWN] +
                          [f"by_layer_{m}.png" for m in SHOWN]))
    if r.test is not None and r.test.get("noise_control"):
        rows = [[name, v[KL_KEY]["quantized"], v[KL_KEY]["noise"],
                 *[x for m in SHOWN[:2] for x in (v[m]["quantized"], v[m]["noise"])]]
                for name, v in r.test["noise_control"].items()]
        out.append(S("Gaussian control", "Each third's quantized arm beside i.i.d. Gaussian "
                     "noise of the same RMS on the same weights.",
                     table=T(["arm", "KL quant", "KL noise",
                              *[f"{m} {w}" for m in SHOWN[:2] for w in ("quant", "noise")]],
                             rows)))
    if r.deep:
        ref_b = r.deep["reference"]["behaviour"]
        rel = r.deep["reference"]["causal"]["reliability"].values()

        def mean(key):
            v = [x[key] for x in rel if x[key] == x[key]]
            return sum(v) / len(v) if v else "-"
        rows = [["reference (even vs odd prompts)", mean("heads_tau_halves"),
                 mean("heads_jaccard10_halves"), mean("features_tau_halves"), "-", "-",
                 ref_b["recognition_accuracy"], _steer(ref_b, "reference directions"), "-"]]
        for name, d in r.deep["arms"].items():
            c, b = d["causal"]["mean"], d["behaviour"]
            rows.append([name, c["heads_kendall_tau"], c["heads_jaccard10"],
                         c["features_kendall_tau"], c["features_sign_kept"],
                         c["features_retained"], b["recognition_accuracy"],
                         _steer(b, "reference directions"), _steer(b, "re-derived directions")])
        out.append(S("Causal and behavioural, deep arms", "Heads: Kendall tau and "
                          "Jaccard@10 of the exact single-head ablation effects against the "
                          "reference's; features: the reference's top causal SAE features "
                          "re-measured (tau, sign kept, summed effect retained); recognition "
                          "accuracy; steering: judge accuracy at each alpha.",
                          table=T(["arm", "heads tau", "heads J@10", "feat tau",
                                   "feat sign kept", "feat retained", "recognition",
                                   "steer (ref dirs)", "steer (re-derived)"], rows)))
    return out


def _steer(b: dict, method: str) -> str:
    curve = b["steering"]["curves"].get(method)
    if curve is None:
        return "-"
    return ", ".join(f"{s:g}: {a:.2f}" for s, a in zip(curve["strengths"], curve["accuracy"]))
