"""The report of `emofast features` (emofast.pipelines.features): its PNGs and index.html."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import report
from ..analysis.feature_flow import KINDS
from ..eval.matched_damage import BUDGETS


def write_plots(out: Path, r) -> None:
    """The PNGs of a FeaturesResult `r`."""
    layers = [l.layer for l in r.flow.layers]
    phases = ", ".join(f"{k}: {' '.join(s.split('.')[0] for s in v)}"
                       for k, v in r.flow.phases.items())
    for name, key, ylabel in (("flow_shares", "shares", "share of live features"),
                              ("flow_counts", "counts", "selective features"),
                              ("flow_probes", "probe", "probe accuracy (held out)")):
        report.plot_layer_curves(out / f"{name}.png", layers,
                                 {k: [getattr(l, key)[k] for l in r.flow.layers] for k in KINDS},
                                 ylabel=ylabel, ylim=None, mark_best=False,
                                 title=f"feature flow ({phases})")
    c = r.choice
    for what, key in (("training accuracy", "train_accuracy"), ("neutral KL (nats)",
                                                                 "kl_neutral")):
        curves = {f"top {m} per emotion": [getattr(x, key) for x in c.candidates
                                           if x.per_emotion == m]
                  for m in sorted({x.per_emotion for x in c.candidates})}
        report.plot_layer_curves(out / f"steering_{key}.png", list(r.config.factors), curves,
                                 xlabel="factor", ylabel=what, ylim=None, mark_best=False,
                                 title=f"feature steering: {what} over the factor")
    for phase in r.trace.phases:
        traces = {e: t.phases[phase] for e, t in r.trace.per_emotion.items()}
        ks = sorted({k for p in traces.values() for k in p.curve_k})
        if not ks:
            continue
        curves = {e: [dict(zip(p.curve_k, p.curve)).get(k, float("nan")) for k in ks]
                  for e, p in traces.items()}
        report.plot_layer_curves(out / f"trace_{phase}.png", ks, curves, xlabel="k (features "
                                 "zeroed together)", ylabel="metric change", ylim=None,
                                 mark_best=False, title=f"{phase} phase: top-k supporting "
                                 "features zeroed (ablated - clean)")
    if r.controls is not None:
        report.plot_scatter_2d(
            out / "controls.png",
            torch.tensor([[k, a] for c in r.controls.curves.values()
                          for k, a in zip(c.kl, c.accuracy)]),
            [name for name, c in r.controls.curves.items() for _ in c.kl],
            title="emotion expression vs damage (each point a strength)",
            xlabel="neutral next-token KL (nats)", ylabel="judge accuracy")
    if r.evaluations:
        groups = [e.data for e in r.evaluations]
        series = {k: [e.accuracies()[k] or 0.0 for e in r.evaluations]
                  for k in ("unsteered", "calibrated", "steered", "random_control")}
        report.plot_bars(out / "recognition.png", groups, series,
                         title="held-out recognition accuracy", ylabel="accuracy")


def write_index(out: Path, r) -> None:
    """DIR/index.html of a FeaturesResult `r`."""
    S, T = report.Section, report.Table
    c = r.choice
    chosen = ("none within the KL budget" if c.chosen is None else
              f"top {c.chosen.per_emotion} per emotion ({c.chosen.n_features} features), factor "
              f"{c.chosen.factor:g}: training accuracy {c.chosen.train_accuracy:.2f} (unsteered "
              f"{c.unsteered_train_accuracy:.2f}), neutral KL {c.chosen.kl_neutral:.3f}"
              + ("" if c.chosen.train_accuracy > c.unsteered_train_accuracy else
                 "; it does not beat the unsteered model on the training texts"))
    trace_rows = []
    for e, t in r.trace.per_emotion.items():
        for name, p in t.phases.items():
            top = p.candidates[0] if p.candidates else ("-", -1)
            trace_rows.append([e, name, t.clean, t.spearman, f"{top[0]}#{top[1]}",
                               p.exact[0] if p.exact else 0.0, p.all_effect,
                               "-" if p.k80 is None else p.k80, len(p.candidates),
                               p.n_opposing])
    eval_rows = [[e.data, e.n, *[("-" if v is None else v) for v in e.accuracies().values()]]
                 for e in r.evaluations]
    pres = [[k, v["kl_neutral"], v["ppl_change"]] for k, v in r.preservation.items()]
    flow_rows = [[l.site, l.n_live, *[l.counts[k] for k in KINDS],
                  *["-" if l.thresholds[k] is None else l.thresholds[k] for k in KINDS],
                  *[l.probe[k] for k in KINDS], l.n_shared,
                  *[f"{v['n']} ({v['strength']:.2f})" if v["strength"] is not None else "0"
                    for v in l.specific.values()]] for l in r.flow.layers]
    emotions = list(r.flow.layers[0].specific) if r.flow.layers else []
    sections = [
        S("Feature flow over depth", f"Per SAE layer on {r.flow.n_texts} texts "
          f"({r.flow.n_tokens} tokens): features selective for syntactic token classes "
          "(token level), topic and emotion (text level, max over tokens), by one-vs-rest AUROC "
          f"above the threshold at FDR {r.flow.fdr} against label permutations; probe accuracy "
          "of the SAE's input for the same labels; phases: each layer takes the kind whose share "
          f"(divided by its maximum over layers) is largest: {r.flow.phases}. Specific: "
          "features selective for exactly one emotion, n (mean AUROC); shared: several.",
          table=T(["site", "live", *[f"{k} n" for k in KINDS], *[f"{k} t" for k in KINDS],
                   *[f"{k} probe" for k in KINDS], "shared", *emotions], flow_rows),
          images=["flow_shares.png", "flow_counts.png", "flow_probes.png"]),
        S("Causal tracing per emotion and phase",
          f"Recognition metric: the true label's answer tokens minus the other labels', on "
          f"{r.config.n_train} training texts per emotion. Candidates: each SAE's top "
          f"{r.config.n_candidates} features by |attribution|, zero-ablated exactly; Spearman "
          "of estimate and exact effect over all candidates; supporting: the phase's candidates "
          "whose zeroing alone lowers the metric (opposing: the others); k80: supporting "
          "features (top by exact effect) reaching 80% of zeroing them all. Phases: from the flow "
          f"({r.trace.phases}).",
          table=T(["emotion", "phase", "clean", "Spearman", "top feature", "its effect",
                   "all supporting", "k80", "supporting", "opposing"], trace_rows),
          images=[f"trace_{p}.png" for p in r.trace.phases
                  if (out / f"trace_{p}.png").is_file()]),
        S("Feature steering", f"Chosen on the training texts: {chosen}. Saved to "
          "steering/ (emofast recognize --steer DIR/steering).",
          table=T(["steering", "neutral KL (nats)", "perplexity ratio"], pres),
          images=["steering_train_accuracy.png", "steering_kl_neutral.png"]),
        S("Held-out recognition", "Accuracy unsteered, with label-logit calibration, with the "
          "chosen steering, and with random features matched in site and firing rate at the "
          "same factor (the control the steering must beat).",
          table=T(["data", "n", "unsteered", "calibrated", "steered", "random control"],
                  eval_rows), images=["recognition.png"] if r.evaluations else []),
    ]
    if r.controls is not None:
        md = r.controls
        rows = [[name, *[("-" if md.at(b)[name] is None else md.at(b)[name]) for b in BUDGETS],
                 ", ".join(f"{s:g}: {a:.2f} @ {k:.2f}" for s, a, k in
                           zip(c.strengths, c.accuracy, c.kl))]
                for name, c in md.curves.items()]
        sections.append(S(
            "Three controls at matched damage", f"Emotion expression on {md.n_prompts} held-out "
            "sev6 prompts per emotion (offline judge; unsteered accuracy "
            f"{md.unsteered:.2f}): each control's best mean accuracy among the strengths whose "
            "mean neutral next-token KL is within the budget ('-': none is).",
            table=T(["control", *[f"at KL {b:g}" for b in BUDGETS],
                     "strength: accuracy @ KL"], rows), images=["controls.png"]))
    report.write_index(out, f"emofast features: {r.model}", sections)
