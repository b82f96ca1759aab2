"""Emotion circuits end to end on one model, and the control comparison, as a report.

    result = run_circuits(model, CircuitsConfig(), "out/circuits")   # or CircuitsConfig.full()
    result.control.overall()    # judge accuracy: modulation, steering, prompting, unsteered

Stages: cached sev6 residual directions; per-unit emotion differences (`unit_differences`);
sublayer importance (`sublayer_importance`, exact zero ablations through sweeps); one circuit
per emotion under a neuron/head budget inside the most important sublayers (`assemble_circuit`
on `unit_scores`); then circuit modulation vs residual steering vs prompting on held-out sev6
prompts, judged, with LM preservation on neutral sentences (`emofast.eval.compare_control`).
Writes DIR/report.json, PNGs and DIR/index.html.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import report
from ..analysis import (EmotionDirections, UnitDifferences, cached_sev_directions,
                        unit_differences)
from ..data import EMOTIONS6, VALENCES, load_skeletons, neutral_sentences, sev_prompts
from ..discovery import (SublayerImportance, assemble_circuit, emotion_metrics,
                         importance_prompts, sublayer_importance, unit_scores)
from ..eval import EmotionJudge, steering_configs
from ..eval.circuit_control import CONDITIONS, ControlComparison, compare_control
from ..eval.control import FULL_GRID, QUICK_GRID
from ..interventions import Circuit
from ..models import Model
from ._config import (check_numbers, checked, feeling_words_option, option, preset_name,
                      report_folder, words_by_emotion, writes_report)


@dataclass
class CircuitsConfig:
    """Sizes and choices; the defaults are the quick preset (~10 minutes on a 2-core CPU)."""
    n_direction_skeletons: int | None = option(
        None, "train skeletons for the residual directions (default: all, the cached set)")
    n_train_skeletons: int = option(6, "train skeletons whose expressed prompts give the unit "
                                    "differences")
    n_importance_skeletons: int = option(1, "train skeletons whose instructed prompts rank "
                                         "sublayers")
    importance_valences: tuple[str, ...] = option(("neutral",), "event valences of the "
                                                  "importance prompts (positive,neutral,negative)")
    importance_per_emotion: bool = option(False, "one importance sweep per emotion (else one "
                                          "shared feeling-word metric)")
    n_val_skeletons: int = option(2, "train skeletons whose prompts choose alpha and steering")
    n_test_skeletons: int = option(4, "held-out test skeletons of the final table")
    budget_neurons: int = option(512, "neurons per emotion's circuit")
    budget_heads: int = option(24, "heads per emotion's circuit")
    sublayer_fraction: float | None = option(0.5, "units only from this top fraction of the 2L "
                                             "sublayers (none: anywhere)")
    alphas: tuple[float, ...] = option((1.5, 2.5, 4.0), "modulation strengths tried")
    steering_grid: tuple[tuple[float, float, float], ...] = option(
        QUICK_GRID, "steering configs to choose from, as the demo's --grid")
    max_new_tokens: int = option(24, "tokens generated per reply")
    n_ppl_texts: int = option(24, "neutral sentences for perplexity / KL")
    feeling_words: tuple[tuple[str, ...], ...] = feeling_words_option()

    def __post_init__(self):
        words_by_emotion(self)
        check_numbers(self, "n_train_skeletons", "n_importance_skeletons", "n_val_skeletons",
                 "n_test_skeletons", "max_new_tokens", "n_ppl_texts")
        if self.n_direction_skeletons is not None:
            check_numbers(self, "n_direction_skeletons")
        for name in ("budget_neurons", "budget_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not self.importance_valences or set(self.importance_valences) - set(VALENCES):
            raise ValueError(f"importance_valences must be some of {VALENCES}, got "
                             f"{self.importance_valences}")
        if self.sublayer_fraction is not None and not 0 < self.sublayer_fraction <= 1:
            raise ValueError(f"sublayer_fraction must be in (0, 1], got {self.sublayer_fraction}")
        if not self.alphas or 0 in self.alphas:
            raise ValueError(f"alphas must be non-empty and non-zero, got {self.alphas}")

    @classmethod
    def full(cls) -> "CircuitsConfig":
        return dataclasses.replace(cls(), n_train_skeletons=36, n_importance_skeletons=4,
                                   importance_valences=VALENCES, importance_per_emotion=True,
                                   n_val_skeletons=6, n_test_skeletons=12,
                                   alphas=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0), steering_grid=FULL_GRID,
                                   max_new_tokens=40, n_ppl_texts=128)


@dataclass
class CircuitsResult:
    model: str
    mode: str                   # "quick", "full" or "custom"
    stage_s: dict[str, float]
    config: CircuitsConfig
    importance: SublayerImportance
    importance_metric: str      # what the importance sweeps measured
    circuits: dict[str, Circuit]
    control: ControlComparison
    elapsed_s: float

    def to_json(self) -> dict:
        imp = self.importance
        return {"model": self.model, "mode": self.mode, "stage_s": self.stage_s,
                "config": dataclasses.asdict(self.config),
                "importance": {"metric": self.importance_metric, "metrics": imp.emotions,
                               "attn": imp.attn, "mlp": imp.mlp, "clean": imp.clean},
                "circuits": {e: {**c.to_json(), "n_neurons": c.n_neurons, "n_heads": c.n_heads}
                             for e, c in self.circuits.items()},
                "control": self.control.to_json(), "elapsed_s": self.elapsed_s}


def find_circuits(model: Model, cfg: CircuitsConfig, imp: SublayerImportance,
                  dirs: EmotionDirections, diffs: UnitDifferences) -> dict[str, Circuit]:
    """One circuit per emotion: the budget's best units by `unit_scores`, inside the top
    `sublayer_fraction` of sublayers (importance = the metric's drop when ablated)."""
    circuits = {}
    for e in EMOTIONS6:
        row = imp.emotions.index(e) if cfg.importance_per_emotion else 0
        within = {} if cfg.sublayer_fraction is None else dict(
            sublayers=(-imp.attn[row], -imp.mlp[row]),
            n_sublayers=max(1, round(cfg.sublayer_fraction * 2 * model.n_layers)))
        circuits[e] = assemble_circuit(*unit_scores(model, dirs, diffs, e), cfg.budget_neurons,
                                       cfg.budget_heads, **within)
    return circuits


@writes_report
def run_circuits(model: Model, config: CircuitsConfig | None = None,
                 out: str | Path = "emofast-circuits", *, progress: bool = True
                 ) -> CircuitsResult:
    """Every stage of the module docstring; writes the report folder `out`."""
    cfg = checked(config, CircuitsConfig, "run_circuits")
    start, out = report_folder(out)
    judge = EmotionJudge.load()
    train = load_skeletons("sev6", split="train")
    clock = report.Stopwatch()
    dirs = clock.run("directions", cached_sev_directions, model,
                     train[:cfg.n_direction_skeletons], progress=progress)
    diffs = clock.run("differences", unit_differences, model, train[:cfg.n_train_skeletons],
                      progress=progress)
    prompts = importance_prompts(model, train[:cfg.n_importance_skeletons],
                                 valences=cfg.importance_valences)
    if not cfg.importance_per_emotion:  # every emotion's prompts, one metric
        prompts = [t for texts in prompts.values() for t in texts]
    imp = clock.run("importance", sublayer_importance, model, prompts,
                    emotion_metrics(model, words_by_emotion(cfg),
                                    shared=not cfg.importance_per_emotion),
                    progress=progress)
    circuits = find_circuits(model, cfg, imp, dirs, diffs)
    val = sev_prompts(train[:cfg.n_val_skeletons], emotions=None, instructed=False)
    control = clock.run("control", compare_control, model, judge, dirs, diffs, circuits, val,
                        load_skeletons("sev6", split="test")[:cfg.n_test_skeletons],
                        steering_configs(cfg.steering_grid, model.n_layers), alphas=cfg.alphas,
                        neutral=neutral_sentences(cfg.n_ppl_texts),
                        max_new_tokens=cfg.max_new_tokens, progress=progress)
    metric = ("LogitDiff(emotion's words, other emotions' words) after 'I feel'"
              if cfg.importance_per_emotion else "LogProb(all emotion words) after 'I feel'")
    result = CircuitsResult(model.name, preset_name(cfg), clock.seconds, cfg, imp, metric,
                            circuits, control, round(time.perf_counter() - start, 1))
    _plots(out, model, result)
    report.write_json(out / "report.json", result.to_json())
    _write_index(out, result)
    return result


def _plots(out: Path, model: Model, r: CircuitsResult) -> None:
    imp = r.importance
    attn, mlp = (imp.attn, imp.mlp) if imp.emotions is None else (imp.attn.mean(0), imp.mlp.mean(0))
    what = "" if imp.emotions is None else f" ({imp.emotions[0]})" if len(imp.emotions) == 1 \
        else f", mean over {len(imp.emotions)} metrics"
    report.plot_layer_curves(out / "sublayer_importance.png", list(range(len(attn))),
                             {"attention": attn, "MLP": mlp},
                             title=f"sublayer zero ablation{what}",
                             ylabel="metric change (ablated - clean)", ylim=None)
    effects = torch.stack([imp.attn, imp.mlp], 1).flatten(0, 1)       # [2E, L]
    lim = float(effects.abs().max())                                  # white = no effect
    report.plot_heatmap(out / "sublayer_importance_emotions.png", effects,
                        [f"{e} {k}" for e in imp.emotions for k in ("attn", "MLP")],
                        [str(x) for x in range(model.n_layers)], vmin=-lim, vmax=lim,
                        title="zero-ablation effect on each metric (ablated - clean)", cmap="RdBu")
    table = r.control.table()
    report.plot_bars(out / "control_accuracy.png", list(table),
                     {c: [table[e][c] for e in table] for c in CONDITIONS},
                     title="held-out sev6 prompts: judge accuracy", ylabel="accuracy")
    choice = r.control.steering_choice
    report.plot_heatmap(out / "steering_grid.png", choice.score, choice.emotions,
                        choice.to_json()["configs"], vmin=0, vmax=1,
                        title="steering selection: judge P(target) x fluent, "
                              "train-skeleton prompts")


def _write_index(out: Path, r: CircuitsResult) -> None:
    S, T = report.Section, report.Table
    c = r.control
    pm, ps, overall = c.modulation_cost, c.steering_cost, c.overall()
    rows = [[e, v["modulation"], v["steering"], v["prompting"], v["unsteered"],
             v["modulation_distinct2"], v["steering_distinct2"], v["modulation_alpha"],
             pm[e].kl_mean, ps[e].kl_mean, pm[e].ppl_edited, ps[e].ppl_edited]
            for e, v in c.table().items()]
    rows.append(["mean"] + [overall[k] for k in CONDITIONS] + [None] * 7)
    cols = ["emotion", "modulation", "steering", "prompting", "unsteered", "mod distinct-2",
            "steer distinct-2", "mod alpha", "mod KL", "steer KL", "mod ppl", "steer ppl"]
    sizes = ", ".join(f"{e}: {v.n_neurons} neurons, {v.n_heads} heads"
                      for e, v in r.circuits.items())
    report.write_index(out, f"emofast circuits: {r.model} ({r.mode}, {r.elapsed_s:.0f} s)", [
        S("Sublayer importance", "Zero-ablating each layer's attention and MLP: change of "
          f"{r.importance_metric} on instructed prompts.",
          images=["sublayer_importance.png", "sublayer_importance_emotions.png"]),
        S("Circuit modulation vs steering vs prompting (held-out prompts)",
          f"Circuits: {sizes}. Modulation alpha and steering were chosen on train-skeleton "
          "prompts; KL and perplexity on neutral sentences measure LM preservation.",
          images=["control_accuracy.png", "steering_grid.png"], table=T(cols, rows))])
