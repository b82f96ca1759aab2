"""Steering additions as sweep variants: add alpha * v to the residual stream leaving a layer.

    from emofast.sweeps import Steer, steer_grid
    variants = steer_grid(dirs, "anger", layers=range(10, 20), alphas=[2, 4, 8])  # 30 variants
    variants += [[Steer(14, dirs.get("anger", 14), 4.0), Edit(15, "attn_z", [3])]]  # mixed
    res = sweep(model, prompts, variants, Projection(dirs.get("anger", 29)))

A `Steer` at layer L adds c * vector to resid_post of L at each prompt's real tokens >= pos_start
(the sweep's `scope` scopes it like any edit), with c = alpha (scale="abs"), or c = alpha *
rms(h) over d_model of the unsteered h (scale="rms"): what `emofast.interventions.Steering` does
during generation. A variant holds at most one Steer per layer (steer several layers with
several Steers) and may mix Steers with ablation Edits.

Inside the sweep a Steer is lowered to the planner's `Add(L, entry, pos_start)`: entry k of the
sweep's `AdditionTable` (vector, alpha, scale, label). The batched engine applies each row's
entry with the `steer_add` kernel; the loop engine adds by plain indexing (`index_steer`), its
independent reference.
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from ..interventions.base import Intervention
from ..kernels import steer_add
from ..sites import resolve_scale
from .plan import Add, Edit, Variant


@dataclass(frozen=True, eq=False, init=False)
class Steer:
    """Add alpha * vector (scale="rms": alpha * rms(h) * vector) to resid_post of `layer`.
    `rms=` is the deprecated spelling of scale (one release)."""
    layer: int
    vector: torch.Tensor       # [d_model]
    alpha: float
    scale: str                 # "abs" | "rms"
    pos_start: int             # real tokens >= pos_start (0 = every token)
    label: str                 # names the vector in results.json, e.g. "anger"

    def __init__(self, layer: int, vector: torch.Tensor, alpha: float = 1.0,
                 scale: str | bool = "abs", pos_start: int = 0, label: str = "", *,
                 rms: bool | None = None):
        if isinstance(scale, bool):  # the old fourth positional argument was rms
            scale, rms = "abs", scale
        set_ = object.__setattr__
        set_(self, "layer", operator.index(layer))
        set_(self, "pos_start", operator.index(pos_start))
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
            raise ValueError(f"Steer at layer {self.layer}: vector must be a [d_model] tensor, "
                             f"got {getattr(vector, 'shape', type(vector).__name__)}")
        if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
                and math.isfinite(alpha)):
            raise ValueError(f"Steer at layer {self.layer}: alpha must be a finite number, got "
                             f"{alpha!r}")
        set_(self, "vector", vector)
        set_(self, "alpha", float(alpha))
        set_(self, "scale", resolve_scale(scale, rms, where="Steer"))
        set_(self, "label", str(label))

    @property
    def rms(self) -> bool:
        return self.scale == "rms"


@dataclass
class AdditionTable:
    """The distinct (vector, alpha, scale, label) entries of a sweep's Steers; entry k = row k."""
    vectors: torch.Tensor      # [K, d_model] fp32
    alphas: list[float]        # as given (results.json); the kernels use them rounded to fp32
    scales: list[str]          # "abs" | "rms" per entry
    labels: list[str]
    _on: dict = field(default_factory=dict, repr=False)  # device -> (vectors, alpha [K] fp32)

    def __len__(self) -> int:
        return len(self.labels)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors [K, d_model], alpha [K] fp32) on `device`, copied once per device."""
        if device not in self._on:
            self._on[device] = (self.vectors.to(device), torch.tensor(self.alphas, device=device))
        return self._on[device]

    def describe(self, k: int) -> dict:
        """Entry k for results.json ("rms" kept beside "scale" for readers of the old format)."""
        return {"alpha": self.alphas[k], "rms": self.scales[k] == "rms", "scale": self.scales[k],
                "label": self.labels[k]}


def steer_grid(directions, emotions: str | Sequence[str], layers: Iterable[int],
               alphas: Iterable[float], *, scale: str = "abs",
               rms: bool | None = None) -> list[list[Steer]]:
    """One variant per (emotion, layer, alpha): the emotion's direction at that layer
    (`EmotionDirections.get`, read at resid_post), steered at that one layer."""
    scale = resolve_scale(scale, rms, where="steer_grid")
    directions.require_site("resid_post", "steering adds to resid_post")
    emotions = [emotions] if isinstance(emotions, str) else list(emotions)
    layers, alphas = list(layers), list(alphas)
    return [[Steer(layer, directions.get(e, layer), float(a), scale, label=e)]
            for e in emotions for layer in layers for a in alphas]


def lower_steers(variants, d_model: int) -> tuple[list[tuple], AdditionTable | None]:
    """Variants of Edits, Steers and other Interventions -> variants whose Steers became Adds
    (identical entries shared), and the table of those entries (None without Steers)."""
    if isinstance(variants, (Edit, Steer, Variant, Intervention)):
        raise ValueError("sweep needs a list of variants, each a list of Edits/Steers")
    entries: dict[tuple, int] = {}
    rows, out = [], []
    for i, v in enumerate(variants):
        if isinstance(v, (Edit, Steer, Intervention)):
            raise TypeError(f"variant {i} is a single {type(v).__name__}: a variant is a list, "
                            "e.g. [edit]")
        items, lowered, layers = (v.edits if isinstance(v, Variant) else tuple(v)), [], set()
        for item in items:
            if isinstance(item, (Edit, Add, Intervention)):
                lowered.append(item)
                continue
            if not isinstance(item, Steer):
                raise TypeError(f"variant {i}: items must be Edits, Steers, FeatureEdits or "
                                f"Interventions, got {item!r}")
            if item.vector.shape[0] != d_model:
                raise ValueError(f"variant {i}: Steer at layer {item.layer} has a vector of "
                                 f"{item.vector.shape[0]} features; the model's d_model is "
                                 f"{d_model}")
            if item.layer in layers:
                raise ValueError(f"variant {i}: two Steers at layer {item.layer}; add their "
                                 "vectors into one Steer")
            layers.add(item.layer)
            vec = item.vector.detach().float().cpu().contiguous()
            if not torch.isfinite(vec).all():
                raise ValueError(f"variant {i}: Steer at layer {item.layer} has a non-finite "
                                 "vector")
            key = (vec.numpy().tobytes(), item.alpha, item.scale, item.label)
            if key not in entries:
                entries[key] = len(rows)
                rows.append((vec, item.alpha, item.scale, item.label))
            lowered.append(Add(item.layer, entries[key], item.pos_start))
        out.append(tuple(lowered))
    if not rows:
        return out, None
    vecs, alphas, scales, labels = zip(*rows)
    return out, AdditionTable(torch.stack(vecs), list(alphas), list(scales), list(labels))


def index_steer(table: AdditionTable, k: int, starts: list[int]):
    """Loop-engine hook on resid_post [B, T, d_model]: row b, positions >= starts[b], += c * v
    by plain indexing, c = alpha or alpha * rms of the unsteered row (the reference)."""
    alpha = float(torch.tensor(table.alphas[k]))        # fp32, as the kernels and Steering
    rms = table.scales[k] == "rms"

    def fn(h, site):
        h = h.clone()
        v = table.vectors[k].to(h.device)
        for b, s in enumerate(starts):
            x = h[b, s:].float()                                           # [T - s, d_model]
            c = alpha * x.pow(2).mean(-1, keepdim=True).sqrt() if rms else alpha
            h[b, s:] = (x + c * v).to(h.dtype)
        return h
    return fn


def rows_steer(table: AdditionTable, entries: torch.Tensor, row_variant: torch.Tensor,
               pos_start: torch.Tensor):
    """Batched-engine hook on resid_post: each row adds its variant's entry (`entries` [V_c]
    int64, -1 = none) with `steer_add`, one call per scale present."""
    vectors, alphas = table.on(row_variant.device)
    entries = entries.cpu()                                                 # [V_c], host side
    calls = []
    for scale in ("abs", "rms"):
        uses = torch.tensor([s == scale for s in table.scales])
        mine = torch.where((entries >= 0) & uses[entries.clamp(min=0)], entries, -1)
        if (mine >= 0).any():
            rows = mine.to(row_variant.device)[row_variant]                 # [B] entry per row
            alpha = torch.where(rows >= 0, alphas[rows.clamp(min=0)], 0.0)
            calls.append((rows, alpha, scale))

    def fn(h, site):
        dev = h.device                            # a device map's layer (no-op otherwise)
        for mine, alpha, scale in calls:
            h = steer_add(h, mine.to(dev), vectors.to(dev), alpha.to(dev),
                          pos_start=pos_start.to(dev), scale=scale)
        return h
    return fn
