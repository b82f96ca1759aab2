"""Linear probes and layer-wise emotion separability over cached activations.

Two classifiers answer "how linearly readable is the emotion at this layer?":
- `fit_probe`: multinomial logistic regression (`fit_logistic`, full-batch LBFGS, deterministic)
  on standardised features, returning a `LinearProbe` you can save and load.
- `centroid_classify`: nearest class mean by cosine after removing the train global mean,
  i.e. "which difference-of-means direction does this row point along?".

`layer_separability` runs both on every layer and reports accuracies and the best layer:

    split = train_test_split(N, test_frac=0.25, stratify=labels)
    sep = layer_separability(acts[:, split.train_idx], [labels[i] for i in split.train_idx],
                             acts[:, split.test_idx], [labels[i] for i in split.test_idx],
                             layers=[0, 6, 12])
    json.dump(sep.to_json(), f)

Pure tensor math in fp32: no model, no hooks. Vocabulary: L (layers), N/M (train/test rows),
E (classes), d_model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..report.files import load_tensors, save_tensors, write_json
from ..sites import parse_site


@dataclass
class LinearProbe:
    """A multinomial logistic-regression probe: logits = ((x - mean) / std) @ weight.T + bias."""

    weight: Tensor  # [E, d_model] acting on standardised features
    bias: Tensor  # [E]
    mean: Tensor  # [d_model] training feature mean
    std: Tensor  # [d_model] training feature std (1 where a feature was constant)
    classes: list[str]  # name of each logit, sorted
    site: str | None = None  # where its features were read ("L12.resid_post"); None: unknown

    def __post_init__(self) -> None:
        self.weight, self.bias, self.mean, self.std = (
            t.detach().to(torch.float32).contiguous() for t in (self.weight, self.bias, self.mean, self.std)
        )
        self.classes = [str(c) for c in self.classes]
        if self.site is not None:
            self.site = str(parse_site(self.site))
        E, d_model = self.weight.shape
        if len(self.classes) != E:
            raise ValueError(f"classes has {len(self.classes)} entries but weight has {E} rows")
        if self.bias.shape != (E,) or self.mean.shape != (d_model,) or self.std.shape != (d_model,):
            raise ValueError(
                f"expected bias [{E}], mean [{d_model}], std [{d_model}] for weight [{E}, {d_model}]; got "
                f"{list(self.bias.shape)}, {list(self.mean.shape)}, {list(self.std.shape)}"
            )

    def require_site(self, site: str) -> None:
        """ValueError unless the probe was fitted at `site` (or its site is unknown): a probe
        read elsewhere answers about activations it never saw."""
        if self.site is not None and str(parse_site(site)) != self.site:
            raise ValueError(f"this probe was fitted on {self.site} activations; reading it at "
                             f"{parse_site(site)} gives meaningless probabilities: read "
                             f"{self.site} or fit a probe there")

    @property
    def layer(self) -> int | None:
        return None if self.site is None else parse_site(self.site).layer

    def logits(self, x: Tensor) -> Tensor:
        """[N, d_model] -> [N, E]."""
        if x.dim() != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"x must be [N, {self.weight.shape[1]}], got {list(x.shape)}")
        z = (x.to(torch.float32) - self.mean) / self.std  # [N, d_model]
        return z @ self.weight.T + self.bias  # [N, E]

    def predict_proba(self, x: Tensor) -> Tensor:
        """[N, d_model] -> [N, E] class probabilities, columns in `classes` order."""
        return self.logits(x).softmax(dim=-1)

    def predict(self, x: Tensor) -> list[str]:
        """[N, d_model] -> N predicted class names."""
        return [self.classes[i] for i in self.logits(x).argmax(dim=-1).tolist()]

    def save(self, path_prefix: str | os.PathLike) -> None:
        """Write `{path_prefix}.safetensors` (weight, bias, mean, std) and `{path_prefix}.json`
        (classes, site)."""
        path_prefix = str(path_prefix)
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}
        save_tensors(path_prefix + ".safetensors", tensors)
        write_json(path_prefix + ".json", {"classes": self.classes, "site": self.site})

    @classmethod
    def load(cls, path_prefix: str | os.PathLike) -> LinearProbe:
        """Read what `save(path_prefix)` wrote."""
        path_prefix = str(path_prefix)
        for ext in (".safetensors", ".json"):
            if not os.path.exists(path_prefix + ext):
                raise FileNotFoundError(f"{path_prefix + ext} not found: pass the prefix LinearProbe.save was given")
        try:
            info = json.loads(open(path_prefix + ".json", encoding="utf-8").read())
            classes, site = info["classes"], info.get("site")
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path_prefix}.json is not a probe's JSON (classes, site)") from None
        return cls(**load_tensors(path_prefix + ".safetensors"), classes=classes, site=site)


def _check_rows(acts: Tensor, labels: Sequence[str], name: str) -> list[str]:
    if acts.dim() != 2:
        raise ValueError(f"{name} must be [N, d_model], got shape {list(acts.shape)}")
    labels = [str(label) for label in labels]
    if len(labels) != acts.shape[0]:
        raise ValueError(f"{name} labels has {len(labels)} entries but {name} has {acts.shape[0]} rows")
    return labels


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, *, l2: float, max_iter: int,
                 init_weight: Tensor | None = None, tolerance_grad: float = 1e-6,
                 tolerance_change: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on features x [N, d] and labels y [N] (ints < n_classes).

    Minimises mean cross-entropy + l2/2 * ||weight||^2 (bias unpenalised) with full-batch LBFGS
    (strong Wolfe line search), in x's dtype, from `init_weight` [n_classes, d] (default zeros)
    and a zero bias. Convex, so deterministic for a given start. Returns (weight, bias) detached,
    in x's dtype. Used by `fit_probe` and by the offline judge's head.
    """
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x [N, d] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1}, "
                         f"got {y.min().item()}..{y.max().item()}")
    y = y.long().to(x.device)
    start = x.new_zeros(n_classes, x.shape[1]) if init_weight is None else init_weight
    weight = start.to(x).clone().requires_grad_()  # [E, d]
    bias = x.new_zeros(n_classes).requires_grad_()  # [E]
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, history_size=20,
        tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(
    acts: Tensor, labels: Sequence[str], *, l2: float = 1e-3, max_iter: int = 200, seed: int = 0,
    site: str | None = None,
) -> LinearProbe:
    """Fit multinomial logistic regression (`fit_logistic`, fp32) on standardised acts
    [N, d_model] read at `site` (recorded: the probe refuses to be read elsewhere).

    Features are standardised with the training mean/std; constant features get std 1. `seed`
    draws the small initial weights, so a fit is deterministic for a given seed.
    """
    labels = _check_rows(acts, labels, "acts")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes to fit a probe, got {classes}")
    x = acts.detach().to(torch.float32)  # [N, d_model]
    mean = x.mean(dim=0)  # [d_model]
    std = x.std(dim=0, correction=0)  # [d_model]
    std = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
    z = (x - mean) / std  # [N, d_model]
    y = torch.tensor([classes.index(label) for label in labels])  # [N]
    gen = torch.Generator().manual_seed(seed)
    init = torch.randn(len(classes), x.shape[1], generator=gen) * 1e-3  # [E, d_model]
    weight, bias = fit_logistic(z, y, len(classes), l2=l2, max_iter=max_iter, init_weight=init)
    return LinearProbe(weight, bias, mean, std, classes, site)


def centroid_classify(train_acts: Tensor, train_labels: Sequence[str], test_acts: Tensor) -> list[str]:
    """Nearest class mean by cosine, after standardising both sides with the train mean and
    per-dimension std (LLM residuals have a few huge-variance dimensions that would otherwise
    decide every cosine).

    train_acts [N, d_model], test_acts [M, d_model] -> M predicted labels.
    """
    labels = _check_rows(train_acts, train_labels, "train_acts")
    if test_acts.dim() != 2 or test_acts.shape[1] != train_acts.shape[1]:
        raise ValueError(f"test_acts must be [M, {train_acts.shape[1]}], got {list(test_acts.shape)}")
    classes = sorted(set(labels))
    x = train_acts.to(torch.float32)
    mu = x.mean(dim=0)  # [d_model]
    sd = x.std(dim=0, unbiased=False).clamp(min=1e-6) if len(x) > 1 else torch.ones_like(mu)
    y = torch.tensor([classes.index(label) for label in labels], device=x.device)  # [N]
    centroids = x.new_zeros(len(classes), x.shape[1]).index_add_(0, y, (x - mu) / sd)  # [E, d]
    centroids /= torch.bincount(y, minlength=len(classes))[:, None]
    z = (test_acts.to(torch.float32) - mu) / sd  # [M, d_model]
    sims = F.normalize(z, dim=-1) @ F.normalize(centroids, dim=-1).T  # [M, E]
    return [classes[i] for i in sims.argmax(dim=-1).tolist()]


class Split(NamedTuple):
    train_idx: Tensor  # [N_train] sorted row indices
    test_idx: Tensor  # [N_test] sorted row indices


def train_test_split(
    n: int, test_frac: float = 0.25, *, seed: int = 0, stratify: Sequence[str] | None = None
) -> Split:
    """Deterministic split of rows 0..n-1; stratified by label when `stratify` is given.

    With stratify, each class sends round(count * test_frac) rows to test but always keeps at
    least one in train (a class with one row is train-only).
    """
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    gen = torch.Generator().manual_seed(seed)
    if stratify is None:
        perm = torch.randperm(n, generator=gen)
        n_test = min(max(round(n * test_frac), 1), n - 1)
        return Split(perm[n_test:].sort().values, perm[:n_test].sort().values)
    labels = [str(label) for label in stratify]
    if len(labels) != n:
        raise ValueError(f"stratify has {len(labels)} labels but n is {n}")
    train, test = [], []
    for c in sorted(set(labels)):
        rows = torch.tensor([i for i, label in enumerate(labels) if label == c])
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n_test = min(round(len(rows) * test_frac), len(rows) - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return Split(torch.cat(train).sort().values, torch.cat(test).sort().values)


class LayerSeparability(NamedTuple):
    """Held-out accuracy of both classifiers per layer."""

    layers: list[int]  # model layer index of each entry
    probe_acc: list[float]  # logistic-probe accuracy on the test rows
    centroid_acc: list[float]  # nearest-centroid (cosine) accuracy on the test rows
    best_layer: int  # layer with the highest probe_acc (ties -> earliest)

    def to_json(self) -> dict:
        """{"layers": [{"layer", "probe_acc", "centroid_acc"}, ...], "best_layer": int}."""
        rows = [
            {"layer": layer, "probe_acc": p, "centroid_acc": c}
            for layer, p, c in zip(self.layers, self.probe_acc, self.centroid_acc)
        ]
        return {"layers": rows, "best_layer": self.best_layer}


def layer_separability(
    train_acts: Tensor,
    train_labels: Sequence[str],
    test_acts: Tensor,
    test_labels: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    progress: bool = True,
) -> LayerSeparability:
    """Fit a probe and a centroid classifier per layer; score both on the test rows.

    train_acts [L, N, d_model], test_acts [L, M, d_model]; `layers` names the model layer of
    each entry of dim 0 (default 0..L-1).
    """
    if train_acts.dim() != 3 or test_acts.dim() != 3:
        raise ValueError(
            "train_acts and test_acts must be [L, N, d_model], "
            f"got {list(train_acts.shape)} and {list(test_acts.shape)}"
        )
    if train_acts.shape[0] != test_acts.shape[0] or train_acts.shape[2] != test_acts.shape[2]:
        raise ValueError(
            f"train_acts {list(train_acts.shape)} and test_acts {list(test_acts.shape)} differ in L or d_model"
        )
    L = train_acts.shape[0]
    train_labels = _check_rows(train_acts[0], train_labels, "train_acts")
    test_labels = _check_rows(test_acts[0], test_labels, "test_acts")
    if not test_labels:
        raise ValueError("test_acts has no rows: pass at least one test example per layer")
    unseen = sorted(set(test_labels) - set(train_labels))
    if unseen:
        raise ValueError(f"test labels {unseen} never occur in training: no classifier can predict them")
    layers = list(range(L)) if layers is None else [int(layer) for layer in layers]
    if len(layers) != L:
        raise ValueError(f"layers has {len(layers)} entries but the acts have {L} layers (dim 0)")

    def accuracy(pred: list[str]) -> float:
        return sum(p == t for p, t in zip(pred, test_labels)) / len(test_labels)

    probe_acc, centroid_acc = [], []
    for i in tqdm(range(L), desc="layer separability", disable=not progress):
        probe = fit_probe(train_acts[i], train_labels)
        probe_acc.append(accuracy(probe.predict(test_acts[i])))
        centroid_acc.append(accuracy(centroid_classify(train_acts[i], train_labels, test_acts[i])))
    best = max(range(L), key=lambda i: (probe_acc[i], -i))
    return LayerSeparability(layers, probe_acc, centroid_acc, layers[best])
