"""Emotion directions: difference-of-means vectors over cached activations.

An emotion direction at a layer is the mean activation of that emotion's rows minus a
baseline, scaled to unit norm. This module holds the container and the math; it never
touches a model. Activations come in already cached, one row per example:

    acts = text_activations(model, texts)        # [L, N, d_model] (analysis.activations)
    dirs = diff_of_means(acts, labels, baseline="neutral", layers=[0, 6, 12])
    dirs.get("joy", 6)                            # [d_model] unit vector
    scores = project(acts[1], dirs, layer=6)      # [N, E] dot products
    dirs.save("out/dirs"); EmotionDirections.load("out/dirs")

Baselines:
- "mean": subtract the mean over all N rows (every label, not only `emotions`).
- any other string: the label of a baseline class (e.g. "neutral"); direction_e =
  mean(rows of e) - mean(rows of the baseline class); the baseline class gets no direction.

Group-centred directions (arXiv 2510.11328): pass `groups`, one id per row (e.g. the
scenario-event a story was written from, shared by its six emotion variants). Each row first
has its group's mean subtracted, which removes what the group's rows share (the scenario)
even when groups do not contain every emotion equally often; the baseline is then applied
to the centred rows as above.

All math is fp32. Vocabulary: L (layers), N (rows), E (emotions), d_model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data import read_text
from ..report.files import load_tensors, save_tensors, write_json

TENSOR_FILE = "directions.safetensors"
META_FILE = "directions.json"


@dataclass
class EmotionDirections:
    """Unit-norm emotion directions at several layers of one model."""

    vectors: Tensor  # [L, E, d_model] fp32, every row unit norm
    emotions: list[str]  # name of each index of dim 1
    layers: list[int]  # model layer index of each index of dim 0
    site: str = "resid_post"  # site the activations were read at
    method: str = "last_token"  # pooling the caller used: "last_token" | "token" | "group_centred"
    baseline: str = "mean"  # "mean" or the label of the baseline class
    meta: dict = field(default_factory=dict)  # JSON-serialisable extras (model name, dataset, ...)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Tensor) or self.vectors.dim() != 3:
            got = tuple(self.vectors.shape) if isinstance(self.vectors, Tensor) else type(self.vectors)
            raise ValueError(f"vectors must be a [L, E, d_model] tensor, got {got}")
        self.vectors = self.vectors.detach().to(torch.float32).contiguous()
        self.emotions = [str(e) for e in self.emotions]
        self.layers = [int(layer) for layer in self.layers]
        L, E, _ = self.vectors.shape
        if len(self.layers) != L:
            raise ValueError(f"layers has {len(self.layers)} entries but vectors has {L} layers (dim 0)")
        if len(self.emotions) != E:
            raise ValueError(f"emotions has {len(self.emotions)} entries but vectors has {E} (dim 1)")
        if len(set(self.emotions)) != E:
            raise ValueError(f"emotions has duplicates: {self.emotions}")
        if len(set(self.layers)) != L:
            raise ValueError(f"layers has duplicates: {self.layers}")
        norms = self.vectors.norm(dim=-1)  # [L, E]
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            worst = (norms - 1).abs().max().item()
            raise ValueError(
                f"vectors rows must be unit norm (off by up to {worst:.3g}): "
                "divide by vectors.norm(dim=-1, keepdim=True) first"
            )

    def require_site(self, site: str, why: str) -> "EmotionDirections":
        """Self, or ValueError when the directions were read at another site (`why` says who
        needs `site`, e.g. "steering adds to resid_post")."""
        if self.site != site:
            raise ValueError(f"{why}, but these directions were read at {self.site!r}: extract "
                             f"them at {site}")
        return self

    def _emotion_index(self, emotion: str) -> int:
        if emotion not in self.emotions:
            raise ValueError(f"unknown emotion {emotion!r}: have {self.emotions}")
        return self.emotions.index(emotion)

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"no directions for layer {layer}: have layers {self.layers}")
        return self.layers.index(layer)

    def get(self, emotion: str, layer: int) -> Tensor:
        """The unit direction of `emotion` at model layer `layer`: [d_model]."""
        return self.vectors[self._layer_index(layer), self._emotion_index(emotion)]

    def at_layer(self, layer: int) -> Tensor:
        """All directions at model layer `layer`: [E, d_model], rows in `emotions` order."""
        return self.vectors[self._layer_index(layer)]

    def save(self, directory: str | os.PathLike) -> str:
        """Write `directions.safetensors` (key "vectors") and `directions.json` into `directory`."""
        info = {
            "emotions": self.emotions,
            "layers": self.layers,
            "site": self.site,
            "method": self.method,
            "baseline": self.baseline,
            "meta": self.meta,
        }
        try:
            json.dumps(info)
        except TypeError as err:
            raise ValueError(f"meta must be JSON-serialisable (str, numbers, lists, dicts): {err}") from err
        save_tensors(os.path.join(directory, TENSOR_FILE), {"vectors": self.vectors})
        write_json(os.path.join(directory, META_FILE), info)
        return str(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmotionDirections:
        """Read what `save` wrote into `directory`."""
        tensor_path = os.path.join(directory, TENSOR_FILE)
        meta_path = os.path.join(directory, META_FILE)
        for path in (tensor_path, meta_path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} not found: pass the directory EmotionDirections.save wrote")
        try:
            info = json.loads(read_text(meta_path))
            vectors = load_tensors(tensor_path)["vectors"]
            return cls(vectors=vectors, **info)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{directory} does not hold directions EmotionDirections.save "
                             f"wrote ({' '.join(str(err).split())})") from None


def _as_layered(acts: Tensor) -> Tensor:
    """Accept [L, N, d_model] or [N, d_model]; return fp32 [L, N, d_model]."""
    if acts.dim() == 2:
        acts = acts.unsqueeze(0)
    if acts.dim() != 3:
        raise ValueError(f"acts must be [L, N, d_model] or [N, d_model], got shape {tuple(acts.shape)}")
    return acts.detach().to(torch.float32)


def _rows(labels: list[str], label: str) -> Tensor:
    """Indices of the rows labelled `label`: [n_label]."""
    return torch.tensor([i for i, x in enumerate(labels) if x == label])


def subtract_group_means(acts: Tensor, groups: Sequence[Hashable]) -> Tensor:
    """[L, N, d_model]: subtract from each row the mean of all rows that share its group id."""
    ids: dict[Hashable, int] = {}
    gidx = torch.tensor([ids.setdefault(g, len(ids)) for g in groups], device=acts.device)  # [N]
    L, _, d_model = acts.shape
    sums = acts.new_zeros(L, len(ids), d_model).index_add_(1, gidx, acts)  # [L, G, d_model]
    counts = torch.bincount(gidx, minlength=len(ids)).to(acts)  # [G]
    means = sums / counts[None, :, None]  # [L, G, d_model]
    return acts - means[:, gidx]  # [L, N, d_model]


def diff_of_means(
    acts: Tensor,
    labels: Sequence[str],
    *,
    baseline: str = "mean",
    groups: Sequence[Hashable] | None = None,
    emotions: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    method: str = "last_token",
    meta: dict | None = None,
) -> EmotionDirections:
    """Unit difference-of-means directions, one per emotion and layer.

    acts: [L, N, d_model] (or [N, d_model], read as L=1) pooled activations.
    labels: N emotion labels, one per row.
    baseline: "mean" (global mean of all rows) or the label of a baseline class.
    groups: optional N group ids; rows are centred on their group mean first (group-centred).
    emotions: order of the output emotions; default sorted unique labels minus the baseline.
    layers: model layer index of each entry of acts' dim 0; default 0..L-1.
    site, method, meta: recorded on the result (method names the pooling the caller used).
    """
    acts = _as_layered(acts)  # [L, N, d_model]
    L, N, _ = acts.shape
    labels = [str(label) for label in labels]
    if len(labels) != N:
        raise ValueError(f"labels has {len(labels)} entries but acts has {N} rows")
    layers = list(range(L)) if layers is None else [int(layer) for layer in layers]
    if len(layers) != L:
        raise ValueError(f"layers has {len(layers)} entries but acts has {L} layers (dim 0)")
    if groups is not None:
        groups = list(groups)
        if len(groups) != N:
            raise ValueError(f"groups has {len(groups)} entries but acts has {N} rows")
        acts = subtract_group_means(acts, groups)

    present = sorted(set(labels))
    if baseline == "mean":
        base = acts.mean(dim=1)  # [L, d_model]
    else:
        if baseline not in present:
            raise ValueError(
                f"baseline label {baseline!r} not in labels {present}: pass baseline='mean' or a present label"
            )
        base = acts[:, _rows(labels, baseline)].mean(dim=1)  # [L, d_model]
    emotions = [e for e in present if e != baseline] if emotions is None else [str(e) for e in emotions]
    if not emotions:
        raise ValueError(f"no emotions to compute: labels are {present} and baseline is {baseline!r}")
    if baseline in emotions and baseline != "mean":
        raise ValueError(f"emotion {baseline!r} is the baseline class: it has no direction; drop it from emotions")
    for e in emotions:
        if e not in present:
            raise ValueError(f"emotion {e!r} has no rows: labels are {present}")

    means = torch.stack([acts[:, _rows(labels, e)].mean(dim=1) for e in emotions], dim=1)  # [L, E, d_model]
    raw = means - base[:, None, :]  # [L, E, d_model]
    norms = raw.norm(dim=-1)  # [L, E]
    scale = acts.norm(dim=-1).mean().clamp_min(1e-30)
    tiny = norms <= 1e-6 * scale
    if tiny.any():
        li, ei = tiny.nonzero()[0].tolist()
        raise ValueError(
            f"direction of {emotions[ei]!r} at layer {layers[li]} has zero norm: its rows have the same mean "
            f"as the baseline {baseline!r}; check labels, groups and the layer's activations"
        )
    vectors = raw / norms[..., None]  # [L, E, d_model]
    return EmotionDirections(
        vectors, emotions, layers, site=site, method=method, baseline=baseline, meta=dict(meta or {})
    )


def project(acts: Tensor, directions: EmotionDirections, layer: int) -> Tensor:
    """Dot products of activations with the directions at `layer`: [..., d_model] -> [..., E]."""
    dirs = directions.at_layer(layer)  # [E, d_model]
    if acts.shape[-1] != dirs.shape[-1]:
        raise ValueError(f"acts has d_model {acts.shape[-1]} but the directions have d_model {dirs.shape[-1]}")
    return acts.to(torch.float32) @ dirs.to(acts.device).T  # [..., E]
