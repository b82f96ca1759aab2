"""`emofast crossmodel`: the small-models preprint's cross-model program on two real models.

    result = run_crossmodel([smollm, gemma], CrossModelConfig(), "emofast-crossmodel")
    result.pairs.curves["ridge"]       # overlap vs k after the neutral-fitted map

With the same texts for both models (basic4's and emo6's sentences, 8 emotions, and neutral
text), per model: sentence-final ("last") vs token-level ("mean" over the text's tokens)
directions per layer, their split-half stability, the cosine between emotions (the "collapse")
and probe accuracy; the emotion subspaces (top-k PCA axes of the emotion texts' token-level
activations, k = 1..k_max) compared across the models before any map (shared coordinates, with
random subspaces of the same sizes as chance) and after maps fitted on neutral text only (ridge
chosen by held-out neutral error, orthogonal Procrustes), with controls: a map fitted on
shuffled neutral pairs, and held-out emotions; a layer x alpha grid of direction injection
judged by the offline judge and by the emotion's feeling words, against random unit directions;
and the exact ablation effect of every head through the batched sweep engine. Writes
DIR/report.json, PNGs, DIR/index.html with a table setting each of the preprint's numbers
beside emofast's (`_crossmodel_report`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import report
from ..analysis.activations import pooled_activations
from ..analysis.crossmodel import Stability, direction_stability
from ..analysis.directions import diff_of_means
from ..analysis.probes import layer_separability, train_test_split
from ..data import EMOTIONS6, general_texts, labelled_sample, neutral_sentences
from ..eval import EmotionJudge
from ..models import Model
from ._config import (check_numbers, checked, feeling_words_option, option, preset_name,
                      report_folder, words_by_emotion, writes_report)
from ._crossmodel_parts import (HeadScreen, PairGrid, Patching, align_pairs, patch_grid,
                                screen_heads)
from ._crossmodel_report import plots, verdicts, write_index

EMOTIONS = ("anger", "gratitude", "apology", "sadness", "happiness", "fear", "surprise", "disgust")
SOURCES = {"basic4": ("anger", "gratitude", "apology"),
           "emo6": ("anger", "sadness", "happiness", "fear", "surprise", "disgust")}
POOLS = {"last": "sentence-final (last token)", "mean": "token-level (mean over tokens)"}


@dataclass
class CrossModelConfig:
    """The defaults are the quick preset (at most 10 minutes on a 2-core CPU)."""
    n_per_emotion: int = option(32, "texts per emotion per dataset (basic4: anger, gratitude, "
                                "apology; emo6: its six)")
    n_general: int = option(192, "general-prose paragraphs (pydoc_data.topics) beside basic4's "
                            "128 neutral sentences: the neutral texts the maps are fitted on")
    k_max: int = option(10, "emotion subspaces of k = 1..k_max dimensions")
    pair_stride: int = option(3, "layer-pair grid: every n-th layer of each model (1: all)")
    patch_depths: tuple[float, ...] = option((0.33, 0.5, 0.67), "injection layers, as "
                                             "fractions of each model's depth")
    patch_alphas: tuple[float, ...] = option((2.0, 4.0, 8.0), "injection strengths (rms-scaled;"
                                             " alpha 0 is the shared baseline)")
    patch_emotions: tuple[str, ...] = option(("anger", "sadness", "happiness", "fear"),
                                             "emotions injected (the judge's labels)")
    n_patch_prompts: int = option(4, "neutral SEV prompts per injection cell")
    max_new_tokens: int = option(20, "tokens generated per injected reply")
    head_emotions: tuple[str, ...] = option(("anger", "happiness"), "emotions whose metric "
                                            "the head screen ablates against")
    n_head_skeletons: int = option(1, "train skeletons (3 prompts each) for the head screen")
    seed: int = option(0, "seed of samples, splits, shuffles and random directions")
    feeling_words: tuple[tuple[str, ...], ...] = feeling_words_option()

    def __post_init__(self):
        words_by_emotion(self)
        check_numbers(self, "n_per_emotion", "n_general", "k_max", "pair_stride",
                      "n_patch_prompts", "max_new_tokens", "n_head_skeletons")
        if self.n_per_emotion < 4:
            raise ValueError(f"n_per_emotion must be >= 4 (split halves and a probe test "
                             f"split), got {self.n_per_emotion}")
        if not self.patch_alphas or any(a <= 0 for a in self.patch_alphas):
            raise ValueError(f"patch_alphas must be > 0 (alpha 0 is always run), got "
                             f"{self.patch_alphas}")
        if not self.patch_depths or any(not 0 <= d <= 1 for d in self.patch_depths):
            raise ValueError(f"patch_depths must lie in [0, 1], got {self.patch_depths}")
        for name in ("patch_emotions", "head_emotions"):
            bad = set(getattr(self, name)) - set(EMOTIONS6)
            if not getattr(self, name) or bad:
                raise ValueError(f"{name} must be some of {EMOTIONS6}, got {getattr(self, name)}")

    @classmethod
    def full(cls) -> "CrossModelConfig":
        return dataclasses.replace(cls(), n_per_emotion=120, n_general=600, pair_stride=1,
                                   patch_depths=(0.17, 0.33, 0.5, 0.67, 0.83),
                                   patch_alphas=(1.0, 2.0, 4.0, 8.0, 16.0),
                                   patch_emotions=EMOTIONS6, n_patch_prompts=8,
                                   head_emotions=("anger", "sadness", "happiness", "fear"),
                                   n_head_skeletons=2)


@dataclass
class ModelSide:
    """One model's within-model results."""
    name: str
    n_layers: int
    d_model: int
    stability: dict[str, Stability]          # pool -> per layer
    probe_acc: dict[str, list[float]]        # pool -> held-out probe accuracy per layer
    patching: Patching
    heads: HeadScreen

    def to_json(self) -> dict:
        return {"name": self.name, "n_layers": self.n_layers, "d_model": self.d_model,
                "stability": {p: s.to_json() for p, s in self.stability.items()},
                "probe_acc": self.probe_acc, "patching": self.patching.to_json(),
                "heads": self.heads.to_json()}


@dataclass
class CrossModelResult:
    mode: str
    config: CrossModelConfig
    emotions: list[str]
    n_texts: dict[str, int]
    models: list[ModelSide]
    pairs: PairGrid
    verdicts: list[dict]
    stage_s: dict[str, float]
    elapsed_s: float

    def to_json(self) -> dict:
        return {"mode": self.mode, "config": dataclasses.asdict(self.config),
                "emotions": self.emotions, "n_texts": self.n_texts, "pools": POOLS,
                "models": [m.to_json() for m in self.models], "pairs": self.pairs.to_json(),
                "verdicts": self.verdicts, "stage_s": self.stage_s, "elapsed_s": self.elapsed_s}


def texts(cfg: CrossModelConfig) -> tuple[list[str], list[str], list[str], int]:
    """(emotion texts, their labels, neutral texts, n_base): the same for both models. Neutral:
    basic4's n_base neutral sentences (also the directions' baseline), then general prose."""
    examples = [e for name, emotions in SOURCES.items()
                for e in labelled_sample(name, emotions, cfg.n_per_emotion, cfg.seed)]
    base = neutral_sentences()
    neutral = base + general_texts(cfg.n_general, 300)
    return [e.text for e in examples], [e.label for e in examples], neutral, len(base)


@writes_report
def run_crossmodel(models: Sequence[Model], config: CrossModelConfig | None = None,
                   out: str | Path = "emofast-crossmodel", *,
                   progress: bool = True) -> CrossModelResult:
    """The whole cross-model report (module docstring) for two models."""
    cfg = checked(config, CrossModelConfig, "run_crossmodel")
    if len(models) != 2:
        raise ValueError(f"run_crossmodel compares two models, got {len(models)}")
    start, out = report_folder(out)
    stage: dict[str, float] = {}
    emo_texts, labels, neutral, n_base = texts(cfg)
    sides, acts, neutral_acts, judge = [], [], [], EmotionJudge.load()
    for model in models:
        t = time.perf_counter()
        a = pooled_activations(model, emo_texts + neutral, progress=progress)   # {pool: [L, N, d]}
        acts.append({p: x[:, :len(emo_texts)] for p, x in a.items()})
        neutral_acts.append(a["mean"][:, len(emo_texts):])
        within = _within(acts[-1], a, labels, n_base, cfg)
        stage[f"{model.name}: activations + within-model"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        dirs = diff_of_means(a["mean"][:, :len(emo_texts) + n_base],
                             labels + ["neutral"] * n_base, baseline="neutral", emotions=EMOTIONS)
        patching = patch_grid(model, dirs, cfg, words_by_emotion(cfg), judge, progress=progress)
        stage[f"{model.name}: injection grid"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        heads = screen_heads(model, cfg, words_by_emotion(cfg), progress=progress)
        stage[f"{model.name}: head screen"] = round(time.perf_counter() - t, 1)
        sides.append(ModelSide(model.name, model.n_layers, model.d_model, *within, patching,
                               heads))
    t = time.perf_counter()
    pairs = align_pairs(acts[0]["mean"], acts[1]["mean"], labels, neutral_acts[0],
                        neutral_acts[1], n_base, EMOTIONS, cfg, progress=progress)
    stage["alignment"] = round(time.perf_counter() - t, 1)
    result = CrossModelResult(preset_name(cfg), cfg, list(EMOTIONS),
                              {"emotion": len(emo_texts), "neutral": len(neutral),
                               "baseline": n_base}, sides, pairs, [], stage, 0.0)
    result.verdicts = verdicts(result)
    result.elapsed_s = round(time.perf_counter() - start, 1)
    plots(out, result)
    report.write_json(out / "report.json", result.to_json())
    write_index(out, result)
    return result


def _within(emo: dict, everything: dict, labels: list[str], n_base: int, cfg: CrossModelConfig):
    """(stability per pool, probe accuracy per pool) of one model; the baseline is basic4's
    neutral sentences (the first n_base neutral texts)."""
    n = len(labels)
    rows = labels + ["neutral"] * n_base
    split = train_test_split(n, 0.25, seed=cfg.seed, stratify=labels)
    stability, probe = {}, {}
    for pool in POOLS:
        x = everything[pool][:, :n + n_base]
        stability[pool] = direction_stability(x, rows, EMOTIONS, seed=cfg.seed)
        train, test = split.train_idx, split.test_idx
        sep = layer_separability(emo[pool][:, train], [labels[i] for i in train],
                                 emo[pool][:, test], [labels[i] for i in test],
                                 progress=False)
        probe[pool] = sep.probe_acc
    return stability, probe
