"""Activations to train SAEs on, streamed: one forward pass feeds every site at once.

    windows = token_windows(model, docs, max_length=256, seed=0)
    for fill in activation_fills(model, windows, sites, ...):    # deterministic, resumable
        for batch in fill.batches:                               # {site: [batch_tokens, d_in]}
            ...

Documents are tokenized without special tokens, cut into windows of at most `max_length`
tokens, and the windows shuffled (seeded), so that every fill mixes documents of every kind.
A fill takes the next windows until they hold `buffer_tokens` tokens, runs them sorted by length
(forwards of at most batch_docs x the longest window's tokens: little padding), each forward
reading every site and stopping after the deepest one, shuffles the tokens (a generator
seeded by seed, epoch and fill) and cuts them into `batch_tokens` batches (a remainder smaller
than a batch is dropped). Each window's first token and special tokens are left out: they carry
massive activations. A fill ends at a window boundary, so `(epoch, window)` is where to resume:
activations are never all in memory, only one fill.

With `cache` (a PartStore opened with keep=False) each fill's activations are stored as a
safetensors shard the first time and read back, checked, in later epochs and later runs instead
of running the model: the same fills, bit for bit, without the forward passes.

Across processes (`ranks`), each rank runs its consecutive share of a fill's forwards and the
rows are gathered in rank order: every rank gets the fill one process builds
(`emofast.sae.distributed`).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch

from ..sites import parse_site
from .distributed import broadcast, gather_rows, my_forwards
from .evaluate import evaluated_positions
from .model import site_width


class Fill(NamedTuple):
    epoch: int
    first_window: int               # the fill's first window: its identity within the epoch
    next_window: int                # where the next fill starts
    n_tokens: int
    batches: list[dict[str, torch.Tensor]]


def token_windows(model, docs: Sequence[str], max_length: int,
                  seed: int | None = None) -> list[list[int]]:
    """Each document's token ids, cut into windows of at most max_length (2 tokens at least);
    shuffled by a generator seeded with `seed` unless it is None."""
    out = []
    for doc in docs:
        ids = model.tokenizer(doc, add_special_tokens=False)["input_ids"]
        out += [ids[i:i + max_length] for i in range(0, len(ids), max_length)
                if len(ids[i:i + max_length]) >= 2]
    if not out:
        raise ValueError("the corpus has no document of 2 tokens or more")
    if seed is not None:
        out = [out[i] for i in torch.randperm(len(out), generator=torch.Generator().manual_seed(
            seed)).tolist()]
    return out


def activation_fills(model, windows: list[list[int]], sites: Sequence[str], *, batch_docs: int,
                     buffer_tokens: int, batch_tokens: int, seed: int, epochs: int,
                     start: tuple[int, int] = (0, 0), cache=None,
                     ranks: tuple[int, int] | None = None) -> Iterator[Fill]:
    """Fills from `start` = (epoch, window) on (see the module docstring). `ranks` (rank,
    world): each rank runs its share of every fill's forwards and the fill is gathered
    (`emofast.sae.distributed`); `cache` is then rank 0's, which decides and broadcasts."""
    names = [str(parse_site(s, model.n_layers)) for s in sites]
    epoch, window = start
    while epoch < epochs:
        while window < len(windows):
            first = window
            part = f"fill-{first:07d}"
            cached = cache is not None and part in cache.manifest
            if ranks is not None:
                cached = broadcast(cached, ranks[0])
            if cached:
                stored = cache.get(part) if cache is not None else None
                if ranks is not None:
                    stored = broadcast(stored, ranks[0])
                acts, window = {n: stored[n] for n in names}, int(stored["next_window"])
            else:
                acts, window = _forward_fill(model, windows, first, names, batch_docs,
                                             buffer_tokens, ranks)
                if cache is not None:
                    cache.put(part, {**acts, "next_window": torch.tensor(window)})
            count = len(acts[names[0]])
            gen = torch.Generator().manual_seed(seed + 1_000_003 * epoch + 7919 * first)
            order = torch.randperm(count, generator=gen)
            acts = {n: a[order] for n, a in acts.items()}
            batches = [{n: a[b * batch_tokens:(b + 1) * batch_tokens] for n, a in acts.items()}
                       for b in range(count // batch_tokens)]
            yield Fill(epoch, first, window, count, batches)
        epoch, window = epoch + 1, 0


class _Stop(Exception):
    """Raised by the deepest site's reader: nothing after it is needed."""


def _forward_fill(model, windows, window: int, names: list[str], batch_docs: int,
                  buffer_tokens: int, ranks: tuple[int, int] | None = None
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """The activations at `names` of the windows from `window` on that hold buffer_tokens
    tokens, and the window after them. The fill's windows run sorted by length, in forwards of
    at most batch_docs x (the longest) tokens, so that short documents are not padded to long
    ones; with `ranks`, this rank's consecutive forwards, gathered in order."""
    first, count = window, 0
    while window < len(windows) and count < buffer_tokens:
        count += len(windows[window]) - 1
        window += 1
    forwards = _forwards(sorted(windows[first:window], key=len), batch_docs)
    mine = range(len(forwards))
    if ranks is not None:
        mine = my_forwards([len(c) * len(c[-1]) for c in forwards], *ranks)
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    deepest = max(names, key=lambda n: (parse_site(n).layer, _ORDER.index(parse_site(n).kind)))
    pad = model.tokenizer.pad_token_id
    for chunk in (forwards[i] for i in mine):
        T = len(chunk[-1])
        ids = torch.tensor([[pad] * (T - len(c)) + c for c in chunk])
        mask = torch.tensor([[0] * (T - len(c)) + [1] * len(c) for c in chunk])
        keep = evaluated_positions(model, ids, mask).to(model.device)
        readers = [(n, _reader(got[n], keep, stop=n == deepest)) for n in names]
        try:
            with torch.no_grad(), model.hooks(readers):
                model.forward(ids, mask, base=True)
        except _Stop:
            pass
    acts = {n: torch.cat(v) if v else torch.zeros(0, site_width(model, parse_site(n).kind))
            for n, v in got.items()}
    if ranks is not None:
        acts = gather_rows(acts, names, ranks[1])
    return acts, window


def _forwards(todo: list[list[int]], batch_docs: int) -> list[list[list[int]]]:
    """Windows sorted by length cut into forwards of at most batch_docs x the longest's tokens."""
    budget, out = batch_docs * len(todo[-1]), []
    while todo:
        size = 1
        while size < len(todo) and (size + 1) * len(todo[size]) <= budget:
            size += 1
        out.append(todo[:size])
        todo = todo[size:]
    return out


# the order in which a block's sites are computed (which one is read last)
_ORDER = ("resid_pre", "attn_z", "attn_out", "resid_mid", "mlp_act", "mlp_out", "resid_post")


def _reader(into: list, keep: torch.Tensor, stop: bool):
    def read(act, site):
        flat = act.flatten(-2) if site.kind == "attn_z" else act
        into.append(flat[keep].float().cpu())
        if stop:
            raise _Stop
    return read
