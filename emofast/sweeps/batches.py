"""A sweep's prompts as left-padded batches, and where each row's edits start.

Every prompt batch is LEFT-padded, so each row's last real token sits at T-1, and position ids
come from the attention mask (`emofast.models.position_ids`: padding changes nothing). An edit's
scope counts real tokens of each prompt: pos_start p edits, in row b, padded positions >=
pad_b + p (a prompt with <= p tokens is not edited); the "last" scope edits T-1 only.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..models import Model
from .. import validation


class Batch(NamedTuple):
    """One left-padded prompt batch: prompts start..stop-1 of the sweep."""
    ids: torch.Tensor           # [P, T] on the model's device
    mask: torch.Tensor          # [P, T]
    pad: torch.Tensor           # [P] pad tokens in front of each row
    start: int
    stop: int


def encode_batches(model: Model, prompts: Sequence[str], batch_size: int) -> list[Batch]:
    """Left-padded prompt batches on the model's device (every row's last token at T-1)."""
    batch_size = validation.positive_int(batch_size, "batch_size")
    prompts = validation.texts(prompts, "sweep prompts")
    batches, dev = [], model.device
    for start in range(0, len(prompts), batch_size):
        texts = list(prompts[start:start + batch_size])
        enc = model.encode(texts, padding_side="left")
        mask = enc["attention_mask"]
        if (mask.sum(-1) == 0).any():
            raise ValueError(f"prompt {start + int((mask.sum(-1) == 0).nonzero()[0])} has no "
                             "tokens: every prompt needs at least one")
        batches.append(Batch(enc["input_ids"].to(dev), mask.to(dev),
                             (mask.shape[1] - mask.sum(-1)).to(dev), start, start + len(texts)))
    return batches


def padded_starts(pad: torch.Tensor, pos_start: torch.Tensor | int, T: int,
                  last: bool) -> torch.Tensor:
    """Real-token pos_start -> the first padded position edited, per row [B] (left padding:
    pad + pos_start; "last": T - 1; T: the row is not edited)."""
    if last:
        return torch.full_like(pad, T - 1)
    return (pad + pos_start).clamp(max=T)
