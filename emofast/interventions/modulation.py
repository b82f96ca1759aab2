"""Circuit modulation (arXiv 2510.11328): at a circuit's units, add alpha x the emotion's
per-unit difference (`emofast.analysis.UnitDifferences`).

    circuit = Circuit(neurons={20: [5, 9]}, heads={14: [3]})
    mod = Modulation.rows(diffs, {"anger": circuit}, [("anger", 4.0), (None, 0.0)])
    texts = generate(model, prompts, intervention=mod)     # per-row, like Steering.rows

Modulation acts at every position of every forward (scope "all"); alpha = 0 leaves the model
exactly unchanged. A `Circuit` is plain data: which neurons and heads, per layer
(`emofast.discovery.assemble_circuit` picks them under a budget).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from typing import ClassVar, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..analysis.units import UnitDifferences
from ..kernels import steer_add
from ..sites import Scope, Site, legacy_scope
from .base import PerRow


def _units(by_layer: Mapping, what: str) -> dict[int, Tensor]:
    out = {}
    for layer, units in by_layer.items():
        u = torch.as_tensor(units).reshape(-1)
        if u.is_floating_point() or u.dtype == torch.bool or (u.numel() and int(u.min()) < 0):
            raise ValueError(f"{what} at layer {layer}: unit indices must be integers >= 0, "
                             f"got {u.tolist()}")
        if u.numel():
            out[int(layer)] = u.long().unique()                       # sorted, deduplicated
    return dict(sorted(out.items()))


@dataclass
class Circuit:
    """The units of one circuit: {layer: LongTensor [k] sorted unit indices}."""
    neurons: dict[int, Tensor] = field(default_factory=dict)  # mlp_act neuron indices
    heads: dict[int, Tensor] = field(default_factory=dict)    # attention head indices

    def __post_init__(self):
        self.neurons, self.heads = _units(self.neurons, "neurons"), _units(self.heads, "heads")

    def __eq__(self, other) -> bool:  # the generated one would compare tensors elementwise
        return isinstance(other, Circuit) and self.to_json() == other.to_json()

    @property
    def n_neurons(self) -> int:
        return sum(len(u) for u in self.neurons.values())

    @property
    def n_heads(self) -> int:
        return sum(len(u) for u in self.heads.values())

    def check(self, n_layers: int, d_mlp: int, n_heads: int) -> None:
        """Raise ValueError if a layer or unit is out of range for the model's sizes."""
        for what, units, n in (("neuron", self.neurons, d_mlp), ("head", self.heads, n_heads)):
            for layer, u in units.items():
                if not 0 <= layer < n_layers:
                    raise ValueError(f"layer {layer} out of range: model has {n_layers} layers "
                                     f"(0..{n_layers - 1})")
                if int(u.max()) >= n:
                    raise ValueError(f"{what} {int(u.max())} at layer {layer} out of range: "
                                     f"{n} {what}s (0..{n - 1})")

    def to_json(self) -> dict:
        """{"neurons": {"3": [5, 9]}, "heads": {"7": [1]}}: plain JSON."""
        return {k: {str(layer): u.tolist() for layer, u in getattr(self, k).items()}
                for k in ("neurons", "heads")}

    @classmethod
    def from_json(cls, obj: Mapping) -> "Circuit":
        return cls({int(k): v for k, v in obj.get("neurons", {}).items()},
                   {int(k): v for k, v in obj.get("heads", {}).items()})


@dataclass
class Modulation(PerRow):
    """Per-row circuit modulation: row i adds alpha[i] x the differences of emotion
    emotion_idx[i] (-1 = none) at that emotion's circuit units, at every position (scope
    "all", the only one). Runs wherever an Intervention does: generate, lm_preservation, sweeps."""
    differences: UnitDifferences
    circuits: dict[str, Circuit]  # per emotion
    emotion_idx: Tensor           # [N] long
    alpha: Tensor                 # [N] fp32
    scope: Scope | str = "all"
    positions: InitVar[str | None] = None   # deprecated old name of scope
    row_fields: ClassVar[tuple[str, ...]] = ("emotion_idx", "alpha")

    def __post_init__(self, positions):
        if positions is not None:
            self.scope = legacy_scope(positions, None, where="Modulation", int_means="last")
        self.scope = Scope.parse(self.scope).require("circuit modulation", "all")
        if self.alpha.shape != self.emotion_idx.shape or self.alpha.dim() != 1:
            raise ValueError("emotion_idx and alpha need one entry per row")
        if not bool(torch.isfinite(self.alpha).all()):
            raise ValueError(f"{type(self).__name__}: every alpha must be a finite number, got "
                             f"{self.alpha.tolist()}")
        L, _, d_mlp = self.differences.mlp.shape
        for e, c in self.circuits.items():
            self.differences.index(e)
            c.check(L, d_mlp, self.differences.attn.shape[2])

    @classmethod
    def rows(cls, differences: UnitDifferences, circuits: Circuit | Mapping[str, Circuit],
             rows: Sequence[tuple[str | None, float]]) -> "Modulation":
        """One row per (emotion or None, alpha); a single Circuit serves every emotion."""
        if isinstance(circuits, Circuit):
            circuits = {e: circuits for e in differences.emotions}
        emo = torch.full((len(rows),), -1, dtype=torch.long)
        alpha = torch.zeros(len(rows))
        for i, (emotion, a) in enumerate(rows):
            if emotion is None or a == 0:
                continue
            emo[i], alpha[i] = differences.index(emotion), float(a)
            if emotion not in circuits:
                raise ValueError(f"no circuit for emotion {emotion!r}: have {sorted(circuits)}")
        return cls(differences, dict(circuits), emo, alpha)

    @classmethod
    def single(cls, differences: UnitDifferences, circuits: Circuit | Mapping[str, Circuit],
               emotion: str, alpha: float) -> "Modulation":
        """The same modulation for every row (broadcast to any batch size)."""
        return cls.rows(differences, circuits, [(emotion, alpha)])

    @contextmanager
    def hooks(self, model) -> Iterator[None]:
        """Install this batch's hooks (rows = batch rows): one steer_add per touched site over
        [B, T, units], the vector zero outside each emotion's circuit."""
        if self.is_identity():
            yield
            return
        d = self.differences
        want = (model.n_layers, len(d.emotions), model.d_mlp, model.n_heads, model.d_head)
        if (*d.mlp.shape, *d.attn.shape[2:]) != want:
            raise ValueError(f"the differences have shape mlp {tuple(d.mlp.shape)}, attn "
                             f"{tuple(d.attn.shape)}: computed on another model than {model!r}")
        E, dev = len(d.emotions), model.device
        tables: dict[Site, tuple[Tensor, Tensor]] = {}   # site -> (vectors [E, W], has [E])
        for e in sorted(set(self.emotion_idx[self.alpha != 0].tolist()) - {-1}):
            c = self.circuits[d.emotions[e]]
            for kind, by_layer, src in (("mlp_act", c.neurons, d.mlp), ("attn_z", c.heads, d.attn)):
                for layer, units in by_layer.items():
                    vec, has = tables.setdefault(Site(layer, kind), (
                        torch.zeros(E, src[layer, 0].numel()), torch.zeros(E, dtype=torch.bool)))
                    vec.view(E, *src.shape[2:])[e, units] = src[layer, e, units]
                    has[e] = True
        rows = self.emotion_idx.clamp(min=0)
        prepared = {site: (torch.where(has[rows] & (self.emotion_idx >= 0), self.emotion_idx,
                                       -1).to(dev), vec.to(dev))       # [B], [E, W]
                    for site, (vec, has) in tables.items()}
        alpha = self.alpha.to(dev)

        def hook(act, site):
            variant, vec = prepared[site]
            return steer_add(act.flatten(2), variant, vec, alpha).view_as(act)

        with model.hooks({str(site): hook for site in prepared}):
            yield
