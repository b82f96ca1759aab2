"""Activations to train SAEs on, streamed: one forward pass feeds every site at once.

    for fill in activation_fills(model, docs, sites, cfg):       # deterministic, resumable
        for batch in fill.batches:                               # {site: [batch_tokens, d_in]}
            ...

Documents are tokenized without special tokens and cut into windows of at most `max_length`
tokens; `batch_docs` windows share a forward, which reads every site. A fill gathers whole
forwards until it holds `buffer_tokens` tokens, shuffles them (across documents; a generator
seeded by seed, epoch and fill) and cuts them into `batch_tokens` batches (a remainder smaller
than a batch is dropped). Each window's first token and special tokens are left out: they carry
massive activations. A fill ends at a window boundary, so `(epoch, window)` is where to resume:
activations are never all in memory, only one fill.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch

from ..sites import parse_site
from .evaluate import evaluated_positions


class Fill(NamedTuple):
    epoch: int
    first_window: int               # the fill's first window: its identity within the epoch
    next_window: int                # where the next fill starts
    n_tokens: int
    batches: list[dict[str, torch.Tensor]]


def token_windows(model, docs: Sequence[str], max_length: int) -> list[list[int]]:
    """Each document's token ids, cut into windows of at most max_length (2 tokens at least)."""
    out = []
    for doc in docs:
        ids = model.tokenizer(doc, add_special_tokens=False)["input_ids"]
        out += [ids[i:i + max_length] for i in range(0, len(ids), max_length)
                if len(ids[i:i + max_length]) >= 2]
    if not out:
        raise ValueError("the corpus has no document of 2 tokens or more")
    return out


def activation_fills(model, windows: list[list[int]], sites: Sequence[str], *, batch_docs: int,
                     buffer_tokens: int, batch_tokens: int, seed: int, epochs: int,
                     start: tuple[int, int] = (0, 0)) -> Iterator[Fill]:
    """Fills from `start` = (epoch, window) on (see the module docstring)."""
    names = [str(parse_site(s, model.n_layers)) for s in sites]
    epoch, window = start
    pad = model.tokenizer.pad_token_id
    while epoch < epochs:
        while window < len(windows):
            got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            count, first = 0, window
            while window < len(windows) and count < buffer_tokens:
                chunk = windows[window:window + batch_docs]
                window += len(chunk)
                T = max(map(len, chunk))
                ids = torch.tensor([[pad] * (T - len(c)) + c for c in chunk])
                mask = torch.tensor([[0] * (T - len(c)) + [1] * len(c) for c in chunk])
                keep = evaluated_positions(model, ids, mask).to(model.device)
                count += int(keep.sum())
                with torch.no_grad(), model.hooks([(n, _reader(got[n], keep)) for n in names]):
                    model.forward(ids, mask, base=True)
            gen = torch.Generator().manual_seed(seed + 1_000_003 * epoch + 7919 * first)
            order = torch.randperm(count, generator=gen)
            acts = {n: torch.cat(v)[order] for n, v in got.items()}
            n_batches = count // batch_tokens
            batches = [{n: a[b * batch_tokens:(b + 1) * batch_tokens] for n, a in acts.items()}
                       for b in range(n_batches)]
            yield Fill(epoch, first, window, count, batches)
        epoch, window = epoch + 1, 0


def _reader(into: list, keep: torch.Tensor):
    def read(act, site):
        flat = act.flatten(-2) if site.kind == "attn_z" else act
        into.append(flat[keep].float().cpu())
    return read
