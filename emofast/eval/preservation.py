"""Language-model preservation (how much an intervention disturbs ordinary text) and fluency.

    [result] = lm_preservation(model, neutral_texts, [steering])
    # -> PreservationResult(ppl_clean, ppl_edited, kl_mean), one per intervention

Both are teacher-forced over every position of each text. An Intervention runs as it would on a
prompt pass (its scope applies to the text), so "last:k" steering perturbs only the last k
tokens of each text; use scope "all" for the strict, every-token number.

`distinct_n` flags degenerate generations ("I I I I ..."), which an emotion judge may still
label confidently: steering selection gates on it.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..interventions.base import Intervention, check_intervention
from ..models import Model
from ..sites import deprecated


class PreservationResult(NamedTuple):
    ppl_clean: float        # perplexity of the unintervened model on the texts
    ppl_edited: float       # perplexity with the intervention
    kl_mean: float          # mean over real next-token positions of KL(clean || edited), nats


def _logits(model: Model, batch: list[str], iv: Intervention | None):
    enc = model.encode(batch, padding_side="left")  # last-k steering reaches every row's last tokens
    rows = None if iv is None else iv.take(slice(0, len(batch)), len(batch))
    with nullcontext() if rows is None else rows.hooks(model):
        return enc, model.forward(enc["input_ids"], enc["attention_mask"]).logits.float()


@torch.inference_mode()
def lm_preservation(model: Model, texts: Sequence[str],
                    interventions: Sequence[Intervention | None] | None = None, *,
                    batch_size: int = 16, steerings=None) -> list[PreservationResult]:
    """For each intervention (one row, broadcast to every text; None = no edit): perplexity
    with and without it, and the mean next-token KL(clean || edited) over all real positions.
    The clean forward runs once per batch, shared by every intervention. `steerings=` is the
    deprecated old name of `interventions`."""
    if steerings is not None:
        if interventions is not None:
            raise ValueError("lm_preservation: give interventions only (steerings= is its old "
                             "name)")
        deprecated("lm_preservation(steerings=...) is deprecated: use interventions=...")
        interventions = steerings
    if interventions is None:
        raise TypeError("lm_preservation needs interventions: a list of Interventions or None")
    if not texts:
        raise ValueError("lm_preservation needs at least one text")
    for iv in interventions:
        check_intervention(iv, "lm_preservation")
        if iv is not None and iv.n_rows() != 1:
            raise ValueError("lm_preservation applies each intervention to every text: give "
                             f"one-row interventions (e.g. Steering.single), not {iv.n_rows()} "
                             "rows")
        if iv is not None and iv.scope.kind == "generated":
            raise ValueError("scope 'generated' never acts on a teacher-forced text; measure "
                             "with scope 'all' (or 'prompt') instead")
    K = len(interventions)
    nll_clean, nll, kl = 0.0, [0.0] * K, [0.0] * K
    n_pairs = n_real = 0
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        enc, clean = _logits(model, batch, None)
        ids = enc["input_ids"].to(clean.device)
        mask = enc["attention_mask"].to(clean.device).bool()
        pairs = mask[:, 1:] & mask[:, :-1]                                  # [B, T-1] real pairs
        lp_clean = F.log_softmax(clean, -1)                                 # [B, T, V]

        def nll_of(logp):
            return -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)[pairs].sum().item()

        nll_clean += nll_of(lp_clean)
        for k, iv in enumerate(interventions):
            lp = F.log_softmax(_logits(model, batch, iv)[1], -1)
            nll[k] += nll_of(lp)
            kl[k] += (lp_clean.exp() * (lp_clean - lp)).sum(-1)[mask].sum().item()
        n_pairs, n_real = n_pairs + int(pairs.sum()), n_real + int(mask.sum())
    if n_pairs == 0:
        raise ValueError("texts need at least two tokens each to measure perplexity")
    ppl_clean = math.exp(nll_clean / n_pairs)
    return [PreservationResult(ppl_clean, math.exp(nll[k] / n_pairs), kl[k] / n_real)
            for k in range(K)]


def distinct_n(texts: Sequence[str], n: int = 2) -> list[float]:
    """Per text: distinct word n-grams / all word n-grams (1.0 = no repetition; texts shorter
    than n words count as 1.0 when non-empty, 0.0 when empty)."""
    out = []
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else float(bool(words)))
    return out
