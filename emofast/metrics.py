"""Language-model preservation: how much an intervention disturbs ordinary text.

    clean, edited = lm_preservation(model, neutral_texts, steering)
    # -> PreservationResult(ppl_clean, ppl_edited, kl_mean)

Both are teacher-forced over every position of each text. The steering runs as it would on a
prompt pass (its `positions` rule applies to the text), so "last k" steering perturbs only the
last k tokens of each text; use positions="all" for the strict, every-token number.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .models import Model


class PreservationResult(NamedTuple):
    ppl_clean: float        # perplexity of the unintervened model on the texts
    ppl_edited: float       # perplexity with the intervention
    kl_mean: float          # mean over real next-token positions of KL(clean || edited), nats


def _logits(model: Model, texts: Sequence[str], intervention, batch_size: int):
    from .steer import apply

    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        enc = model.encode(batch)
        rows = None if intervention is None else intervention.take(slice(0, len(batch)), len(batch))
        with apply(model, rows):
            logits = model.forward(enc["input_ids"], enc["attention_mask"]).logits.float()
        yield enc, logits


@torch.inference_mode()
def lm_preservation(model: Model, texts: Sequence[str], steering=None, *,
                    batch_size: int = 16) -> PreservationResult:
    """Perplexity with and without `steering` (a `Steering`, broadcast to every text), and the
    mean next-token KL(clean || edited) over all real positions."""
    if not texts:
        raise ValueError("lm_preservation needs at least one text")
    nll = {"clean": 0.0, "edited": 0.0}
    kl_sum, n_pairs, n_real = 0.0, 0, 0
    for (enc, clean), (_, edited) in zip(_logits(model, texts, None, batch_size),
                                         _logits(model, texts, steering, batch_size)):
        ids, mask = enc["input_ids"].to(clean.device), enc["attention_mask"].to(clean.device).bool()
        pairs = mask[:, 1:] & mask[:, :-1]                                # [B, T-1] real pairs
        for key, logits in (("clean", clean), ("edited", edited)):
            logp = F.log_softmax(logits[:, :-1], -1)
            nll[key] -= logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[pairs].sum().item()
        lp_c, lp_e = F.log_softmax(clean, -1), F.log_softmax(edited, -1)
        kl_sum += (lp_c.exp() * (lp_c - lp_e)).sum(-1)[mask].sum().item()  # [B, T] -> real
        n_pairs, n_real = n_pairs + int(pairs.sum()), n_real + int(mask.sum())
    if n_pairs == 0:
        raise ValueError("texts need at least two tokens each to measure perplexity")
    return PreservationResult(math.exp(nll["clean"] / n_pairs), math.exp(nll["edited"] / n_pairs),
                              kl_sum / n_real)
