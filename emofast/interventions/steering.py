"""Steering: add alpha * v to the residual stream at chosen layers and positions.

    dirs = EmotionDirections.load("out/directions")
    steering = Steering.single(dirs, "anger", layers=range(10, 20), alpha=4.0, scale="rms")
    texts = generate(model, prompts, intervention=steering)

Each batch row carries its own (emotion, layer set, alpha), so a whole layer x alpha grid, with
the unsteered rows beside it, runs as one batched generation (`Steering.rows`). At layer L the
edit is delta = alpha * v_L (scale="abs") or alpha * v_L * rms(h) (scale="rms", rms over
d_model per token, as in arXiv 2510.11328), added to resid_post of L.

scope (`emofast.sites.Scope`): "all" every position of every forward; "prompt" only the prompt
pass; "generated" only the passes that process generated tokens; "last:k" the last k positions
of each forward (the last k prompt tokens, then each new token; "last" = "last:1"). Batches are
left-padded (`generate` and `lm_preservation` do so), so the last k positions are every row's
real last tokens. alpha = 0 leaves the model exactly unchanged. `positions=` (an int k meant
"last:k") and `rms=` are deprecated spellings of scope and scale (one release).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import InitVar, dataclass
from typing import ClassVar, Iterable, Iterator, Sequence

import torch

from ..analysis.directions import EmotionDirections
from ..kernels import steer_add
from ..sites import Scope, legacy_scope, resolve_scale
from .base import PerRow

SCOPES = ("all", "last:k", "prompt", "generated")


@dataclass
class Steering(PerRow):
    """Per-row steering. `emotion_idx` [N] (-1 = unsteered), `alpha` [N], `layer_mask` [N, L]."""
    directions: EmotionDirections
    emotion_idx: torch.Tensor
    alpha: torch.Tensor
    layer_mask: torch.Tensor
    scope: Scope | str = "all"
    scale: str = "abs"
    positions: InitVar[str | int | None] = None   # deprecated old name of scope (k: last:k)
    row_fields: ClassVar[tuple[str, ...]] = ("emotion_idx", "alpha", "layer_mask")

    def __post_init__(self, positions):
        if isinstance(self.scope, int) and not isinstance(self.scope, bool):  # old positional k
            positions, self.scope = self.scope, "all"
        if positions is not None:
            if Scope.parse(self.scope) != Scope():
                raise ValueError("Steering: give scope= only (positions= is its deprecated old "
                                 "name)")
            self.scope = legacy_scope(positions, None, where="Steering", int_means="last")
        self.scope = Scope.parse(self.scope).require("steering", *SCOPES)
        self.scale = resolve_scale(self.scale, None, where="Steering")
        n = len(self.emotion_idx)
        if self.alpha.shape != (n,) or self.layer_mask.shape[0] != n:
            raise ValueError("emotion_idx, alpha and layer_mask need one entry per row")
        if not bool(torch.isfinite(self.alpha).all()):
            raise ValueError(f"{type(self).__name__}: every alpha must be a finite number, got "
                             f"{self.alpha.tolist()}")
        self.directions.require_site("resid_post", "steering adds to resid_post")
        steered = self.layer_mask.any(0).nonzero().squeeze(-1).tolist()
        missing = sorted(set(steered) - set(self.directions.layers))
        if missing:
            raise ValueError(f"no direction for layer(s) {missing}: the directions cover layers "
                             f"{self.directions.layers}")

    @classmethod
    def rows(cls, directions: EmotionDirections,
             rows: Sequence[tuple[str | None, Iterable[int], float]], n_layers: int | None = None,
             *, scope: Scope | str | None = None, scale: str = "abs", rms: bool | None = None,
             positions=None) -> "Steering":
        """One row per (emotion or None, layers, alpha); None or alpha 0 means unsteered.
        `n_layers` defaults to the deepest layer the directions cover, plus one."""
        scope = legacy_scope(positions, scope, where="Steering", int_means="last")
        scale = resolve_scale(scale, rms, where="Steering")
        n_layers = n_layers or max(directions.layers) + 1
        emo = torch.full((len(rows),), -1, dtype=torch.long)
        alpha = torch.zeros(len(rows))
        mask = torch.zeros(len(rows), n_layers, dtype=torch.bool)
        for i, (emotion, layers, a) in enumerate(rows):
            if emotion is None or a == 0:
                continue
            if emotion not in directions.emotions:
                raise ValueError(f"no direction for emotion {emotion!r}: have {directions.emotions}")
            emo[i], alpha[i] = directions.emotions.index(emotion), float(a)
            for layer in layers:
                if not 0 <= layer < n_layers:
                    raise ValueError(f"layer {layer} out of range: model has {n_layers} layers "
                                     f"(0..{n_layers - 1})")
                mask[i, layer] = True
        return cls(directions, emo, alpha, mask, scope, scale)

    @classmethod
    def single(cls, directions: EmotionDirections, emotion: str, layers: Iterable[int],
               alpha: float, n_layers: int | None = None, **kw) -> "Steering":
        """The same steering for every row (broadcast to any batch size)."""
        return cls.rows(directions, [(emotion, list(layers), alpha)], n_layers, **kw)

    @contextmanager
    def hooks(self, model) -> Iterator[None]:
        """Install the steering hooks for one batch (rows = batch rows)."""
        if self.is_identity():
            yield
            return
        dev = model.device
        calls: dict[int, int] = {}
        vectors, variants = {}, {}
        for layer in self.layer_mask.any(0).nonzero().squeeze(-1).tolist():
            vectors[layer] = self.directions.at_layer(layer).to(dev)           # [E, d_model]
            variants[layer] = torch.where(self.layer_mask[:, layer], self.emotion_idx,
                                          -1).to(dev)
        alpha, scope = self.alpha.to(dev), self.scope

        def hook(h, site):
            call = calls.get(site.layer, 0)
            calls[site.layer] = call + 1
            B, T = h.shape[:2]
            if scope.kind == "prompt" and call > 0 or scope.kind == "generated" and call == 0:
                return None
            start = max(T - scope.n, 0) if scope.kind == "last" else 0
            pos_start = torch.full((B,), start, device=h.device)
            return steer_add(h, variants[site.layer], vectors[site.layer], alpha,
                             pos_start=pos_start, scale=self.scale)

        with model.hooks({f"L{layer}.resid_post": hook for layer in vectors}):
            yield
