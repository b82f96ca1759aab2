"""Prefix reuse: run a model from layer f on a residual computed elsewhere.

    with skip_layers(model, f, resid_pre_f, as_tuple):   # resid_pre_f [B, T', d_model]
        out = model.hf.base_model(...)                   # layers < f cost nothing

Inside the unmodified HF forward, layers 0..f-1 are swapped for `Skip` modules: the last one
returns `resid_pre_f` (the residual entering layer f, e.g. the clean run's or the reference
model's), the others pass their input through. The sweep engine uses it for variants whose
edits start at f; the quantization profiler for arms that change only layers >= f.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class Skip(nn.Module):
    """Stands in for a decoder layer below the first computed one: passes the hidden state
    through, or (the last one) replaces it by the given residual."""

    def __init__(self, out: torch.Tensor | None, as_tuple: bool, replaced: nn.Module):
        super().__init__()
        self.out, self.as_tuple = out, as_tuple
        # some forwards read the layer's attention type (Qwen2 in transformers < 5.4)
        self.attention_type = getattr(replaced, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        h = hidden_states if self.out is None else self.out
        return (h,) if self.as_tuple else h


@contextmanager
def skip_layers(model, first: int, start_hidden: torch.Tensor | None, as_tuple: bool):
    """Swap decoder layers 0..first-1 of `model` (an emofast Model) for `Skip`s for the
    duration (restored on exit, also when the forward raises). `as_tuple`: the family's decoder
    layers return (hidden, ...) (GPT-Neo) rather than a tensor (`blocks_return_tuple`)."""
    blocks = model.adapter.blocks
    saved = [blocks[i] for i in range(first)]
    try:
        for i in range(first):
            blocks[i] = Skip(start_hidden if i == first - 1 else None, as_tuple, saved[i])
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


@contextmanager
def blocks_return_tuple(model):
    """Yields a list that receives, at the first decoder layer's first call inside the block,
    whether it returned a tuple (what `skip_layers` needs to imitate)."""
    returns: list[bool] = []
    handle = model.adapter.blocks[0].register_forward_hook(
        lambda module, args, output: returns.append(isinstance(output, tuple)))
    try:
        yield returns
    finally:
        handle.remove()
