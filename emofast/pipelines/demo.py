"""`emofast demo`: directions, separability and a judged steering grid on one model, as a report.

    result = run_demo(model, DemoConfig(), "emofast-demo")      # or DemoConfig.full()
    result.comparison.overall["steered"]                        # judge accuracy, held-out prompts

Stages (each with a progress bar):
1. basic4: mean-pooled resid_post at every layer, held-out probe / nearest-direction accuracy by
   layer, directions against the neutral class, PCA at the best layer.
2. sev6: separability of the six emotions in the instructed SEV prompts (last prompt token),
   train -> test skeletons; group-centred "expressed" directions from the train skeletons
   (`emofast.analysis.sev`).
3. steering: each emotion's (layer window, alpha) is chosen on uninstructed prompts built from
   TRAIN skeletons (`emofast.eval.select_steering`); then unsteered, prompted ("Always reply in
   {emotion}") and steered replies to held-out TEST prompts are judged (`compare_steering`).
4. language-model preservation of each chosen steering on basic4's neutral sentences.
Writes DIR/report.json, PNG plots and DIR/index.html.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .. import report
from ..analysis import (EmotionDirections, LayerSeparability, diff_of_means, emotion_pca,
                        example_activations, layer_separability, prompt_activations,
                        sev_directions, subtract_group_means, train_test_split)
from ..data import EMOTIONS6, load_dataset, load_skeletons, neutral_sentences, sev_prompts
from ..eval import (EmotionJudge, PreservationResult, SteeringChoice, SteeringComparison,
                    compare_steering, select_steering, steering_configs, steering_preservation)
from ..eval.control import FULL_GRID, QUICK_GRID
from ..models import Model
from ._config import check_numbers, checked, option, preset_name, report_folder, writes_report


@dataclass
class DemoConfig:
    """Sizes of each stage; the defaults are the quick preset (~3 minutes on a 2-core CPU)."""
    n_train_skeletons: int = option(12, "sev6 train skeletons for the directions")
    n_sep_skeletons: int = option(6, "sev6 train skeletons for the separability probe")
    n_test_skeletons: int = option(4, "sev6 test skeletons for separability and the final table")
    n_val_skeletons: int = option(2, "train skeletons whose three events select the steering")
    grid: tuple[tuple[float, float, float], ...] = option(
        QUICK_GRID, "steering configs to choose from: ';'-separated first,last,alpha triples, "
        "first and last steered layer as fractions of depth, e.g. 0.4,0.57,1.5;0.27,0.43,1")
    scale: Literal["abs", "rms"] = option("rms", "steering magnitude: alpha * v (abs) or "
                                          "alpha * rms(h) * v (rms)")
    max_new_tokens: int = option(24, "tokens generated per reply")
    n_ppl_texts: int = option(24, "neutral sentences for perplexity / KL")

    def __post_init__(self):
        check_numbers(self, "n_train_skeletons", "n_sep_skeletons", "n_test_skeletons",
                 "n_val_skeletons", "max_new_tokens", "n_ppl_texts")
        if not self.grid or any(len(c) != 3 or not 0 <= c[0] <= c[1] <= 1 for c in self.grid):
            raise ValueError(f"grid must be non-empty (first, last, alpha) triples with "
                             f"0 <= first <= last <= 1, got {self.grid}")
        if self.scale not in ("abs", "rms"):
            raise ValueError(f"scale must be 'abs' or 'rms', got {self.scale!r}")

    @classmethod
    def full(cls) -> "DemoConfig":
        """Every sev6 skeleton, a 32-config grid, longer replies (~1 h on a 2-core CPU)."""
        return dataclasses.replace(cls(), n_train_skeletons=36, n_sep_skeletons=36,
                                   n_test_skeletons=12, n_val_skeletons=6, grid=FULL_GRID,
                                   max_new_tokens=40, n_ppl_texts=128)


class Separability(NamedTuple):
    """One dataset's stage: accuracy by layer, its counts and the PCA at the best layer."""
    separability: LayerSeparability
    counts: dict[str, int]      # basic4: {"n"}; sev6: {"n_train", "n_test"}
    pca_explained: list[float]

    def to_json(self) -> dict:
        return {**self.separability.to_json(), **self.counts,
                "pca_explained": self.pca_explained}


@dataclass
class DemoResult:
    model: str
    mode: str                   # "quick", "full" or "custom" (a preset with changes)
    device: str
    stage_s: dict[str, float]   # seconds per stage
    basic4: Separability
    sev6: Separability
    choice: SteeringChoice      # the steering selection on train-skeleton prompts
    comparison: SteeringComparison  # the held-out table
    preservation: dict[str, PreservationResult]  # per emotion, its chosen steering
    elapsed_s: float

    def to_json(self) -> dict:
        """report.json: {"model", "mode", "device", "stage_s", "basic4", "sev6", "steering":
        {"grid", "per_emotion", "overall", ...}, "preservation", "elapsed_s"}."""
        return {"model": self.model, "mode": self.mode, "device": self.device,
                "stage_s": self.stage_s, "basic4": self.basic4.to_json(),
                "sev6": self.sev6.to_json(),
                "steering": {"grid": self.choice.to_json(), **self.comparison.to_json()},
                "preservation": {e: r._asdict() for e, r in self.preservation.items()},
                "elapsed_s": self.elapsed_s}


def _separability(train, train_labels, test, test_labels, path: Path, title: str, chance: float,
                  progress: bool) -> LayerSeparability:
    sep = layer_separability(train, train_labels, test, test_labels, progress=progress)
    report.plot_layer_curves(path, sep.layers, {"linear probe": sep.probe_acc,
                                                "nearest direction": sep.centroid_acc},
                             title=title, chance=chance)
    return sep


def stage_basic4(model: Model, out: Path, progress: bool) -> Separability:
    data = load_dataset("basic4")
    labels = [e.label for e in data]
    acts = example_activations(model, data, pool="mean", progress=progress)   # [L, N, d]
    split = train_test_split(len(data), 0.25, seed=0, stratify=labels)
    tr, te = split.train_idx, split.test_idx
    sep = _separability(acts[:, tr], [labels[i] for i in tr], acts[:, te], [labels[i] for i in te],
                        out / "basic4_separability.png", "basic4: held-out accuracy by layer", 0.25,
                        progress)
    dirs = diff_of_means(acts[:, tr], [labels[i] for i in tr], baseline="neutral",
                         method="mean_pooled", meta={"model": model.name, "dataset": "basic4"})
    dirs.save(out / "basic4")
    pca = emotion_pca(acts[sep.best_layer], n_components=2)
    report.plot_scatter_2d(out / "basic4_pca.png", pca.projected, labels,
                           title=f"basic4, layer {sep.best_layer} (PCA)")
    return Separability(sep, {"n": len(data)}, pca.explained_variance_ratio.tolist())


def stage_sev6(model: Model, cfg: DemoConfig, out: Path,
               progress: bool) -> tuple[EmotionDirections, Separability]:
    train = load_skeletons("sev6", split="train")
    test = load_skeletons("sev6", split="test")[:cfg.n_test_skeletons]
    p_train, p_test = sev_prompts(train[:cfg.n_sep_skeletons]), sev_prompts(test)
    a_train = prompt_activations(model, p_train, progress=progress)
    a_test = prompt_activations(model, p_test, progress=progress)
    y_train, y_test = [p.emotion for p in p_train], [p.emotion for p in p_test]
    sep = _separability(a_train, y_train, a_test, y_test, out / "sev6_separability.png",
                        "sev6 prompts: train -> test skeletons", 1 / 6, progress)
    dirs = sev_directions(model, train[:cfg.n_train_skeletons], progress=progress)
    dirs.save(out / "sev6")
    best = a_train[sep.best_layer][None]                                    # [1, N, d_model]
    pca = emotion_pca(subtract_group_means(best, [p.group for p in p_train])[0], n_components=2)
    report.plot_scatter_2d(out / "sev6_pca.png", pca.projected, y_train,
                           title=f"sev6 group-centred, layer {sep.best_layer} (PCA)")
    return dirs, Separability(sep, {"n_train": len(p_train), "n_test": len(p_test)},
                              pca.explained_variance_ratio.tolist())


@writes_report
def run_demo(model: Model, config: DemoConfig | None = None, out: str | Path = "emofast-demo", *,
             progress: bool = True) -> DemoResult:
    """Run every stage and write the report folder `out`."""
    cfg = checked(config, DemoConfig, "run_demo")
    start, out = report_folder(out)
    judge = EmotionJudge.load()
    clock = report.Stopwatch()
    basic4 = clock.run("basic4", stage_basic4, model, out, progress)
    dirs, sev6 = clock.run("sev6", stage_sev6, model, cfg, out, progress)
    val = sev_prompts(load_skeletons("sev6", split="train")[:cfg.n_val_skeletons], emotions=None,
                      instructed=False)
    kw = dict(max_new_tokens=cfg.max_new_tokens, scale=cfg.scale, progress=progress)
    choice = clock.run("steering", select_steering, model, dirs, judge,
                       steering_configs(cfg.grid, model.n_layers), val, **kw)
    comparison = clock.run("steering", compare_steering, model, dirs, judge, choice.chosen,
                           load_skeletons("sev6", split="test")[:cfg.n_test_skeletons], **kw)
    preservation = clock.run("preservation", steering_preservation, model, dirs, choice.chosen,
                             neutral_sentences(cfg.n_ppl_texts), scale=cfg.scale)
    result = DemoResult(model.name, preset_name(cfg), str(model.device), clock.seconds, basic4,
                        sev6, choice, comparison, preservation, time.perf_counter() - start)
    plot_steering(out, result)
    report.write_json(out / "report.json", result.to_json())
    write_index(out, result)
    return result


def plot_steering(out: Path, r: DemoResult) -> None:
    """steering_grid.png (the selection) and steering_accuracy.png (the held-out table)."""
    report.plot_heatmap(out / "steering_grid.png", r.choice.score, list(EMOTIONS6),
                        r.choice.to_json()["configs"],
                        title="steering selection: judge P(target) x fluent, train-skeleton "
                              "prompts", vmin=0, vmax=1)
    conds = ("unsteered", "prompted", "steered")
    table = r.comparison.per_emotion
    report.plot_bars(out / "steering_accuracy.png", list(table),
                     {c: [getattr(table[e], c) for e in table] for c in conds},
                     title="held-out sev6 prompts: judge accuracy", ylabel="accuracy")


def write_index(out: Path, r: DemoResult) -> None:
    S, T = report.Section, report.Table
    table, pres, overall = r.comparison.per_emotion, r.preservation, r.comparison.overall
    rows = [[e, v.unsteered, v.prompted, v.steered, v.steered_distinct2,
             f"L{v.layers[0]}-{v.layers[-1]}", v.alpha, pres[e].ppl_clean, pres[e].ppl_edited,
             pres[e].kl_mean] for e, v in table.items()]
    rows.append(["mean", overall["unsteered"], overall["prompted"], overall["steered"]]
                + [None] * 6)
    b4, s6 = r.basic4.separability, r.sev6.separability
    sections = [
        S("basic4: where emotion becomes linearly separable",
          f"Best layer {b4.best_layer}: probe accuracy {max(b4.probe_acc):.3f} on held-out "
          "sentences.", images=["basic4_separability.png", "basic4_pca.png"]),
        S("sev6: the six emotions in the instructed prompts",
          f"Best layer {s6.best_layer} (train skeletons -> test skeletons).",
          images=["sev6_separability.png", "sev6_pca.png"]),
        S("Steering vs prompting vs unsteered (held-out prompts)",
          "Judge accuracy per emotion; the steering layer window and alpha were chosen on "
          "train-skeleton prompts (grid below). Perplexity and KL on neutral sentences measure "
          "language-model preservation under each chosen steering.",
          images=["steering_accuracy.png", "steering_grid.png"],
          table=T(["emotion", "unsteered", "prompted", "steered", "steered distinct-2", "layers",
                   "alpha", "ppl clean", "ppl steered", "KL"], rows)),
        S("Sample steered replies", "\n\n".join(f"{e}: {v.example}" for e, v in table.items())),
    ]
    report.write_index(out, f"emofast demo: {r.model} ({r.mode}, {r.elapsed_s:.0f} s)",
                       sections)
