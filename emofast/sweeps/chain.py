"""The chain engine: variants in the given order, each started from the previous one's state
at the first layer where their edits differ.

Top-k curves ablate k = 1..K units together: variant k is variant k-1 plus one unit at layer
l_k, so both compute the same residual stream below l_k. The batched engine starts each variant
at its lowest edited layer, near 0 once the set spans many layers; this engine starts variant k
at l_k from variant k-1's residuals entering each layer (kept per prompt batch), about halving
a curve's cost. Any order is exact: a variant that differs from its predecessor at layer f
recomputes from f, so one sharing nothing starts where the batched engine starts it. Every
variant is a forward of its own (the batched engine packs many into one), all positions are
computed (scope "last" is the batched engine's: it reuses the clean keys/values), and prompts
with shared prefixes run them once (`emofast.sweeps.shared`). Variants are stored in pieces of
PIECE; a piece's first variant starts from the clean run.
"""
from __future__ import annotations

import torch

from .batched import Forward, plan_job, run_chunk
from .clean import clean_pass
from .job import Job, finish, source_keys
from .plan import Chunk
from .shared import PrefixGroups, prefix_groups

PIECE = 32


def run_chain(job: Job, todo: list[int]) -> int:
    """Run `todo` in order, each variant from its predecessor's state. Returns 0 (a chunk of
    one variant cannot halve on out-of-memory: lower batch_size)."""
    if job.last:
        raise ValueError("engine='chain' computes every position; with scope 'last' the "
                         "batched engine reuses the clean keys and values: use it")
    model, L = job.model, job.model.n_layers
    chunks = {i: c for i, c in zip(todo, _single_chunks(job, todo))}
    patch = source_keys(job, [job.variants[i] for i in todo])
    means = {k for c in chunks.values() for k, blk in c.blocks.items() if blk.mode == "mean"}
    states, fills = clean_pass(model, job.batches, job.metric, mean_keys=means, keep_kv=True,
                               first_layers=set(range(1, L)), sources=job.sources,
                               patch_keys=patch, last=False)
    fw = Forward({k: m.flatten() for k, m in fills.items()}, False, job.additions,
                 job.features, job.metric)
    # patches mix per-prompt sources: no shared prefixes anywhere (one layout for the chain)
    groups = [None if patch or st.kv is None else prefix_groups(st.batch) for st in states]
    for piece in (todo[a:a + PIECE] for a in range(0, len(todo), PIECE)):
        for state, g in zip(states, groups):
            _run_piece(model, state, g, [(i, chunks[i]) for i in piece], fw, job)
        finish(job, piece)
    return 0


def _run_piece(model, state, groups: PrefixGroups | None, piece: list[tuple[int, Chunk]],
               fw: Forward, job: Job) -> None:
    """The piece's variants on one prompt batch, each from its predecessor's residuals.
    `resid`: the last variant's residual entering each layer it computed; a layer missing is
    below every start so far, where every variant of the piece is still clean."""
    b, L, metric = state.batch, model.n_layers, fw.metric

    def entering(layer):
        if layer in resid:
            return resid[layer]
        x = state.resid_pre[layer]
        return x if groups is None else (groups.prefix_of(x), groups.suffix_of(x))
    resid, prev, prev_values = {}, None, None
    for i, chunk in piece:
        sig = _signature(job.variants[i])
        f = _first_difference(prev or {}, sig, L)      # no predecessor: its lowest edit
        unchanged = f >= L or metric.reads == "resid" and metric.resid_layer(L) < f
        if prev is not None and unchanged:        # equal to its predecessor where it is read
            values = prev_values
        else:
            capture = {layer: None for layer in range(f + 1, L)}
            start = entering(f) if 0 < f < L else None
            above = {k: blk for k, blk in chunk.blocks.items() if k[0] >= f}  # below: in `start`
            values = run_chunk(model, state, Chunk(chunk.variant_ids, f, 0, chunk.bytes, above),
                               fw, shared=groups, start=start, capture=capture)
            resid = {**{k: v for k, v in resid.items() if k <= f}, **capture}
        job.per_prompt[i, b.start:b.stop] = values.to(job.per_prompt.device)
        prev, prev_values = sig, values


def _single_chunks(job: Job, todo: list[int]) -> list[Chunk]:
    """One chunk per variant, in `todo` order (the planner may reorder a plan of several)."""
    plan = plan_job(job, todo)
    by_variant = {}
    for c in plan.chunks:
        for row in range(len(c.variant_ids)):
            by_variant[todo[int(c.variant_ids[row])]] = c.take(slice(row, row + 1))
    return [by_variant[i] for i in todo]


def _signature(variant: tuple) -> dict:
    """(layer, site) -> what the variant does there (mode, start, units or table entry)."""
    return {(e.layer, e.site): (e.mode, e.pos_start, tuple(sorted(set(e.units))))
            for e in variant}


def _first_difference(a: dict, b: dict, n_layers: int) -> int:
    """The lowest layer where two signatures differ (n_layers if nowhere)."""
    return min((layer for layer, site in a.keys() | b.keys()
                if a.get((layer, site)) != b.get((layer, site))), default=n_layers)
