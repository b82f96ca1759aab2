"""Steering additions as sweep variants: add alpha * v to the residual stream leaving a layer.

    from emofast.sweep_steer import Steer, steer_grid
    variants = steer_grid(dirs, "anger", layers=range(10, 20), alphas=[2, 4, 8])  # 30 variants
    variants += [[Steer(14, dirs.get("anger", 14), 4.0), Edit(15, "attn_z", [3])]]  # mixed
    res = sweep(model, prompts, variants, Projection(dirs.get("anger", 29)))

A `Steer` at layer L adds c * vector to resid_post of L at each prompt's real tokens >= pos_start
(the sweep's `positions` scopes it like any edit), with c = alpha, or with rms=True c = alpha *
rms(h) over d_model of the unsteered h: what `emofast.steer.Steering` does during generation.
A variant holds at most one Steer per layer (steer several layers with several Steers) and may
mix Steers with ablation Edits.

Inside the sweep a Steer is lowered to Edit(L, "resid", [k], "steer", pos_start): unit k is its
entry in the sweep's `SteerTable` (vector, alpha, rms), so the planner packs it like any other
edit. The batched engine applies every row's entry with the `steer_add` kernel; the loop engine
adds by plain indexing (`index_steer`), its independent reference.
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from .kernels import steer_add
from .planner import Edit, Variant


@dataclass(frozen=True, eq=False)
class Steer:
    """Add alpha * vector (rms=True: alpha * rms(h) * vector) to resid_post of `layer`."""
    layer: int
    vector: torch.Tensor       # [d_model]
    alpha: float = 1.0
    rms: bool = False
    pos_start: int = 0         # real tokens >= pos_start (0 = every token)
    label: str = ""            # names the vector in results.json, e.g. "anger"

    def __post_init__(self):
        object.__setattr__(self, "layer", operator.index(self.layer))
        object.__setattr__(self, "pos_start", operator.index(self.pos_start))
        if not isinstance(self.vector, torch.Tensor) or self.vector.dim() != 1:
            raise ValueError(f"Steer at layer {self.layer}: vector must be a [d_model] tensor, "
                             f"got {getattr(self.vector, 'shape', type(self.vector).__name__)}")
        if not (isinstance(self.alpha, numbers.Real) and not isinstance(self.alpha, bool)
                and math.isfinite(self.alpha)):
            raise ValueError(f"Steer at layer {self.layer}: alpha must be a finite number, got "
                             f"{self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if not isinstance(self.rms, bool):
            raise ValueError(f"Steer at layer {self.layer}: rms must be a bool, got {self.rms!r}")


@dataclass
class SteerTable:
    """The distinct (vector, alpha, rms, label) entries of a sweep's Steers; unit k = entry k."""
    vectors: torch.Tensor      # [K, d_model] fp32
    alphas: list[float]        # as given (results.json); the kernels use them rounded to fp32
    rms: torch.Tensor          # [K] bool
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
        return {"alpha": self.alphas[k], "rms": bool(self.rms[k]), "label": self.labels[k]}


def steer_grid(directions, emotions: str | Sequence[str], layers: Iterable[int],
               alphas: Iterable[float], *, rms: bool = False) -> list[list[Steer]]:
    """One variant per (emotion, layer, alpha): the emotion's direction at that layer
    (`EmotionDirections.get`, read at resid_post), steered at that one layer."""
    check_resid_post(directions)
    emotions = [emotions] if isinstance(emotions, str) else list(emotions)
    layers, alphas = list(layers), list(alphas)
    return [[Steer(layer, directions.get(e, layer), float(a), rms, label=e)]
            for e in emotions for layer in layers for a in alphas]


def check_resid_post(directions) -> None:
    """Steers add to resid_post: refuse directions read at another site (as Steering does)."""
    if directions.site != "resid_post":
        raise ValueError(f"steering adds to resid_post, but these directions were read at "
                         f"{directions.site!r}: extract them at resid_post")


def lower_steers(variants, d_model: int) -> tuple[list[tuple[Edit, ...]], SteerTable | None]:
    """Variants of Edits and Steers -> variants of Edits (Steer -> a "steer" Edit on "resid")
    and the table of their entries (None without Steers). Identical entries are shared."""
    if isinstance(variants, (Edit, Steer, Variant)):
        raise ValueError("sweep needs a list of variants, each a list of Edits/Steers")
    entries: dict[tuple, int] = {}
    rows, out = [], []
    for i, v in enumerate(variants):
        if isinstance(v, (Edit, Steer)):
            raise TypeError(f"variant {i} is a single {type(v).__name__}: a variant is a list, "
                            "e.g. [edit]")
        items = v.edits if isinstance(v, Variant) else tuple(v)
        edits, layers = [], set()
        for item in items:
            if isinstance(item, Edit):
                if item.site == "resid" or item.mode == "steer":
                    raise ValueError(f"variant {i}: steer the residual stream with "
                                     f"Steer(layer, vector, alpha), not {item}")
                edits.append(item)
                continue
            if not isinstance(item, Steer):
                raise TypeError(f"variant {i}: items must be Edit or Steer, got {item!r}")
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
            key = (vec.numpy().tobytes(), float(item.alpha), item.rms, item.label)
            if key not in entries:
                entries[key] = len(rows)
                rows.append((vec, float(item.alpha), item.rms, item.label))
            edits.append(Edit(item.layer, "resid", [entries[key]], "steer", item.pos_start))
        out.append(tuple(edits))
    if not rows:
        return out, None
    vecs, alphas, rms, labels = zip(*rows)
    return out, SteerTable(torch.stack(vecs), list(alphas), torch.tensor(rms), list(labels))


def index_steer(table: SteerTable, k: int, starts: list[int]):
    """Loop-engine hook on resid_post [B, T, d_model]: row b, positions >= starts[b], += c * v
    by plain indexing, c = alpha or alpha * rms of the unsteered row (the reference)."""
    alpha = float(torch.tensor(table.alphas[k]))        # fp32, as the kernels and Steering
    rms = bool(table.rms[k])

    def fn(h, site):
        h = h.clone()
        v = table.vectors[k].to(h.device)
        for b, s in enumerate(starts):
            x = h[b, s:].float()                                           # [T - s, d_model]
            c = alpha * x.pow(2).mean(-1, keepdim=True).sqrt() if rms else alpha
            h[b, s:] = (x + c * v).to(h.dtype)
        return h
    return fn


def rows_steer(table: SteerTable, mask: torch.Tensor, row_variant: torch.Tensor,
               pos_start: torch.Tensor):
    """Batched-engine hook on resid_post: each row's entry (the one bit of its variant's mask
    row, [V_c, words] int32 on the host) added by `steer_add`, once per rms setting present."""
    bits = (mask.long().unsqueeze(-1) >> torch.arange(32)) & 1              # [V_c, words, 32]
    bits = bits.flatten(1)[:, :len(table)]
    entry = torch.where(bits.any(1), bits.argmax(1), -1)                    # [V_c]
    vectors, alphas = table.on(row_variant.device)
    calls = []
    for rms in (False, True):
        mine = torch.where((entry >= 0) & (table.rms[entry.clamp(min=0)] == rms), entry, -1)
        if (mine >= 0).any():
            rows = mine.to(row_variant.device)[row_variant]                 # [B]
            alpha = torch.where(rows >= 0, alphas[rows.clamp(min=0)], 0.0)
            calls.append((rows, alpha, rms))

    def fn(h, site):
        for rows, alpha, rms in calls:
            h = steer_add(h, rows, vectors, alpha, pos_start=pos_start, rms=rms)
        return h
    return fn
