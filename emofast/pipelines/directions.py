"""`emofast directions`: emotion directions, a probe and layer-wise separability from a labelled
dataset, as a folder.

    result = run_directions(model, DirectionsConfig(train="basic4"), "out/dirs")
    result.separability.best_layer

Reads `site` activations (resid_post by default) at every layer asked for, pooled per text;
measures held-out probe and nearest-direction accuracy per layer (on `eval` when given, else on
a held-out `test_frac` of `train`); writes the difference-of-means directions
(directions.safetensors + directions.json), a probe at the best layer (probe.safetensors),
separability.png and metrics.json: {"layers": [{"layer", "probe_acc", "centroid_acc"}, ...],
"best_layer", "site", "pool", "baseline", "n_train", "n_eval", "evaluated_on"}.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .. import report
from ..analysis import (EmotionDirections, LayerSeparability, diff_of_means, example_activations,
                        fit_probe, layer_separability, train_test_split)
from ..data import load_dataset
from ..models import Model
from ..sites import parse_layers, parse_site
from ._config import check_numbers, option, writes_report


@dataclass
class DirectionsConfig:
    """What to read and how to evaluate it; `train` is required."""
    train: str = option(None, "JSONL {text, label[, span]}, a judged-reply file of the paper, "
                        "or a built-in name (basic4)")
    eval: str | None = option(None, "JSONL to measure accuracy on (default: a held-out split "
                              "of --train)")
    sites: tuple[str, ...] | None = option(None, "site names of one kind, e.g. "
                                           "L10.resid_post,L12.resid_post (default: resid_post "
                                           "at --layers)")
    layers: str = option("all", "'all', '12', '0,4,8' or '10-19'")
    pool: Literal["mean", "last", "span"] = option(
        "mean", "tokens per text: mean over the text, the last token, or the emotion-bearing "
        "span (needs 'span' in the data)")
    baseline: str | None = option(None, "label to subtract (default: 'neutral' if present, else "
                                  "the global mean)")
    test_frac: float = option(0.25, "held-out fraction without --eval")
    batch_size: int = option(32, "texts per forward")

    def __post_init__(self):
        if not self.train:
            raise ValueError("directions needs a training set: --train FILE or basic4")
        if self.pool not in ("mean", "last", "span"):
            raise ValueError(f"pool must be mean, last or span, got {self.pool!r}")
        if not 0 < self.test_frac < 1:
            raise ValueError(f"test_frac must be in (0, 1), got {self.test_frac}")
        check_numbers(self, "batch_size")
        if self.sites:
            kinds = {parse_site(s).kind for s in self.sites}
            if len(kinds) != 1:
                raise ValueError(f"sites must all be of one kind, got {sorted(kinds)}")


class DirectionsResult(NamedTuple):
    directions: EmotionDirections
    separability: LayerSeparability
    evaluated_on: str           # the --eval file, or "held-out 0.25 of --train"
    metrics: dict               # what metrics.json holds

    def best(self) -> tuple[float, float]:
        """(probe, nearest-direction) accuracy at the best layer."""
        i = self.separability.layers.index(self.separability.best_layer)
        return self.separability.probe_acc[i], self.separability.centroid_acc[i]


@writes_report
def run_directions(model: Model, config: DirectionsConfig, out: str | Path, *,
                   progress: bool = True) -> DirectionsResult:
    """See the module docstring."""
    if not isinstance(config, DirectionsConfig):
        raise TypeError(f"run_directions(model, config, out): config must be a DirectionsConfig, "
                        f"got {config!r}")
    cfg, out = config, Path(out)
    kind = parse_site(cfg.sites[0]).kind if cfg.sites else "resid_post"
    layers = ([parse_site(s, model.n_layers).layer for s in cfg.sites] if cfg.sites
              else parse_layers(cfg.layers, model.n_layers))
    train = load_dataset(cfg.train)
    kw = dict(kind=kind, layers=layers, pool=cfg.pool, batch_size=cfg.batch_size,
              progress=progress)
    acts = example_activations(model, train, **kw)                          # [L, N, width]
    labels = [e.label for e in train]
    if cfg.eval:
        evaluation = load_dataset(cfg.eval)
        tr_acts, tr_y = acts, labels
        te_acts, te_y = example_activations(model, evaluation, **kw), [e.label for e in evaluation]
    else:
        split = train_test_split(len(train), cfg.test_frac, seed=0, stratify=labels)
        tr_acts, tr_y = acts[:, split.train_idx], [labels[i] for i in split.train_idx]
        te_acts, te_y = acts[:, split.test_idx], [labels[i] for i in split.test_idx]
    sep = layer_separability(tr_acts, tr_y, te_acts, te_y, layers=layers, progress=progress)
    baseline = cfg.baseline or ("neutral" if "neutral" in labels else "mean")
    dirs = diff_of_means(tr_acts, tr_y, baseline=baseline, layers=layers, site=kind,
                         method=f"{cfg.pool}_pooled",
                         meta={"model": model.name, "train": str(cfg.train)})
    dirs.save(out)
    fit_probe(tr_acts[layers.index(sep.best_layer)], tr_y,
              site=f"L{sep.best_layer}.{kind}").save(out / "probe")
    evaluated_on = str(cfg.eval) if cfg.eval else f"held-out {cfg.test_frac:g} of --train"
    metrics = {**sep.to_json(), "site": kind, "pool": cfg.pool, "baseline": baseline,
               "n_train": len(tr_y), "n_eval": len(te_y), "evaluated_on": evaluated_on}
    report.write_json(out / "metrics.json", metrics)
    report.plot_layer_curves(out / "separability.png", sep.layers,
                             {"linear probe": sep.probe_acc, "nearest direction": sep.centroid_acc},
                             title=f"{Path(str(cfg.train)).name}: accuracy by layer",
                             chance=1 / len(set(labels)))
    return DirectionsResult(dirs, sep, evaluated_on, metrics)
