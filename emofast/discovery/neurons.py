"""Neurons along an emotion direction: how much each MLP neuron writes along it.

    ranking = rank_neurons(model, dirs, "joy", acts=model.cache(texts, ["L3.mlp_act"]))
    ranking.top(20)                       # [(layer, neuron, score)], largest score first

`rank_neurons` reads weights only (plus, optionally, cached activations): a neuron's
`projection` is how much one unit of its activation writes along the emotion direction,
W_down(L)[j] . v_L; its `contribution` is mean activation x projection (arXiv 2510.11328).
In Gemma 2/3 the MLP output passes a norm before the residual: W_down then carries the norm's
gain (`Adapter.residual_W_down`), and the per-token RMS division, shared by the layer's neurons,
is left out (rankings within a layer are exact to first order, across layers approximate).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..analysis.directions import EmotionDirections
from ..models import Model


class NeuronRanking(NamedTuple):
    """Per-neuron scores at `layers` (row i of each tensor is model layer layers[i]).

    Sign: a positive score means the neuron pushes the residual stream towards +v (the
    emotion) -- for `projection` per unit of positive activation, for `contribution` on
    average over the given activations. Negative scores suppress the emotion."""
    layers: list[int]           # model layer of each row
    projection: Tensor          # [L, d_mlp] fp32, W_down(layer) @ v_layer
    contribution: Tensor | None  # [L, d_mlp] fp32, mean activation x projection; None w/o acts

    def top(self, k: int = 20, by: Literal["contribution", "projection"] | None = None,
            largest: bool = True) -> list[tuple[int, int, float]]:
        """The k (layer, neuron, score) with the largest scores (smallest if not `largest`),
        sorted best first. `by` defaults to "contribution" when activations were given,
        else "projection"."""
        by = by or ("projection" if self.contribution is None else "contribution")
        if by not in ("contribution", "projection"):
            raise ValueError(f"by must be 'contribution' or 'projection', got {by!r}")
        scores = getattr(self, by)
        if scores is None:
            raise ValueError("no contribution: pass acts= to rank_neurons, or use by='projection'")
        flat = scores.flatten()
        vals, idx = flat.topk(min(k, flat.numel()), largest=largest)
        d_mlp = scores.shape[1]
        return [(self.layers[i // d_mlp], i % d_mlp, v)
                for i, v in zip(idx.tolist(), vals.tolist())]


def rank_neurons(model: Model, directions: Mapping[int, Tensor] | EmotionDirections,
                 emotion: str | None = None, *,
                 acts: Mapping[int | str, Tensor] | None = None) -> NeuronRanking:
    """Score every MLP neuron of each direction's layer by how it writes along the direction.

    directions: {layer: v [d_model]} (used as given; unit vectors make scores comparable
      across layers), or an `EmotionDirections` with `emotion` (all of its layers).
    acts: cached mlp_act activations per layer, {layer: [N, d_mlp]} (keys may also be site
      names "L3.mlp_act", as `model.cache(texts, ["L3.mlp_act"])` returns); every layer of
      `directions` needs one. Their mean over N times the projection is the contribution."""
    if isinstance(directions, EmotionDirections):
        if emotion is None:
            raise ValueError("rank_neurons with EmotionDirections needs the emotion, e.g. 'joy'")
        directions = {layer: directions.get(emotion, layer) for layer in directions.layers}
    elif emotion is not None:
        raise ValueError("emotion is only used with EmotionDirections; a dict is one emotion")
    if not directions:
        raise ValueError("rank_neurons needs at least one layer's direction")
    layers = sorted(int(layer) for layer in directions)
    proj = []
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise ValueError(f"layer {layer} out of range: model has {model.n_layers} layers")
        v = torch.as_tensor(directions[layer]).float().reshape(-1)
        if v.numel() != model.d_model:
            raise ValueError(f"direction at layer {layer} has {v.numel()} entries, "
                             f"expected d_model={model.d_model}")
        W = model.adapter.residual_W_down(layer).float()              # [d_mlp, d_model]
        proj.append(W @ v.to(W.device))                               # [d_mlp]
    projection = torch.stack(proj).cpu()                              # [L, d_mlp]
    contribution = None
    if acts is not None:
        means = []
        for layer in layers:
            a = acts.get(layer, acts.get(f"L{layer}.mlp_act"))
            if a is None:
                raise ValueError(f"acts has no entry for layer {layer} (key {layer} or "
                                 f"'L{layer}.mlp_act')")
            a = torch.as_tensor(a)
            if a.dim() != 2 or a.shape[1] != model.d_mlp:
                raise ValueError(f"acts[{layer}] must be [N, d_mlp={model.d_mlp}], "
                                 f"got {tuple(a.shape)}")
            means.append(a.float().mean(0).cpu())                     # [d_mlp]
        contribution = torch.stack(means) * projection                # [L, d_mlp]
    return NeuronRanking(layers, projection, contribution)
