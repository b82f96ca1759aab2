"""Per-unit emotion differences: what each neuron and head does differently per emotion.

    diffs = unit_differences(model, load_skeletons("sev6", split="train"))
    diffs.mlp[layer, diffs.index("anger")]      # [d_mlp] anger's mean minus the mean over all

Measured like `sev_directions(source="expressed")`: mlp_act and attn_z at every layer, pooled
over the prefilled reply opening after the uninstructed sev6 prompt, centred per scenario-event
group; per emotion, the mean minus the mean over all emotions. Circuit modulation adds alpha
times these at a circuit's units (`emofast.interventions.Modulation`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..data import EMOTIONS6, Skeleton, sev_prompts
from ..models import Model
from ..sites import sites_for
from .activations import expressed_texts
from .directions import subtract_group_means


class UnitDifferences(NamedTuple):
    """Per emotion and unit: group-centred mean activation minus the mean over all emotions."""
    mlp: Tensor                 # [L, E, d_mlp] fp32
    attn: Tensor                # [L, E, H, d_head] fp32
    emotions: list[str]

    def index(self, emotion: str) -> int:
        if emotion not in self.emotions:
            raise ValueError(f"unknown emotion {emotion!r}: have {self.emotions}")
        return self.emotions.index(emotion)


def unit_differences(model: Model, skeletons: Sequence[Skeleton], *, batch_size: int = 32,
                     progress: bool = True) -> UnitDifferences:
    """mlp_act and attn_z at every layer, pooled over the prefilled reply opening after the
    uninstructed sev6 prompt (extract's "expressed" source), centred per scenario-event group."""
    prompts = sev_prompts(list(skeletons), instructed=False, prefill=True)
    texts, spans = expressed_texts(model, prompts)
    L = model.n_layers
    names = sites_for("mlp_act", range(L)) + sites_for("attn_z", range(L))
    acts = model.cache(texts, names, pool="span", spans=spans, templated=True,
                       batch_size=batch_size, progress=progress)      # one pass, both kinds
    labels, groups = [p.emotion for p in prompts], [p.group for p in prompts]

    def diff(stack: Tensor) -> Tensor:                                 # [L, N, W] -> [L, E, W]
        centred = subtract_group_means(stack.float(), groups)
        base = centred.mean(1)
        return torch.stack([centred[:, [i for i, y in enumerate(labels) if y == e]].mean(1) - base
                            for e in EMOTIONS6], dim=1)

    mlp = diff(torch.stack([acts[n] for n in names[:L]]))
    attn = diff(torch.stack([acts[n].flatten(1) for n in names[L:]]))
    return UnitDifferences(mlp, attn.unflatten(-1, (model.n_heads, model.d_head)), list(EMOTIONS6))

