"""The loop engine, the reference: per variant and prompt batch, one hooked forward.

Edits are done by plain indexing (`index_edit`), Steers by `steer.index_steer`, SAE feature
edits by `features.index_feature_edit`, other
Interventions through their own hooks; full logits are computed, as the peers (nnsight,
TransformerLens) do it. The batched engine must give the same numbers (tests/sweeps).
"""
from __future__ import annotations

from contextlib import ExitStack

import torch

from .batches import padded_starts
from .clean import clean_pass, readout_hook
from .features import index_feature_edit
from .job import Job, edit_keys, finish, source_keys
from .metrics import Readout, overflowed_to_nan
from .plan import SITES, Add, Edit
from .steer import index_steer

PIECE = 16  # variants per stored piece


def run_loop(job: Job, todo: list[int]) -> int:
    """Run `todo` one variant at a time; returns the number of OOM splits (always 0)."""
    model, metric = job.model, job.metric
    chosen = [job.variants[i] for i in todo]
    states, means = clean_pass(model, job.batches, metric, first_layers=set(),
                               mean_keys=edit_keys(chosen, "mean"), keep_kv=False,
                               sources=job.sources, patch_keys=source_keys(job, chosen),
                               last=job.last)
    for piece in range(0, len(todo), PIECE):
        ids = todo[piece:piece + PIECE]
        for i in ids:
            for st in states:
                job.per_prompt[i, st.batch.start:st.batch.stop] = _one(job, job.variants[i],
                                                                       st, means)
        finish(job, ids)
    return 0


def _one(job: Job, variant: tuple, st, means: dict) -> torch.Tensor:
    """Metric values [P] of one variant on one clean state's batch."""
    model, metric, b = job.model, job.metric, st.batch
    T, P, seen, hooks = b.ids.shape[1], b.stop - b.start, {}, []
    fill = {"mean": means, "patch": st.patch}
    # the batched engine's order: its blocks run by (layer, site kind), so two hooks at one
    # site (a Steer and an SAE edit at L.resid_post) compose the same way in both engines
    for e in sorted((e for e in variant if isinstance(e, (Edit, Add))),
                    key=lambda e: (e.layer, SITES.index(e.site))):
        starts = padded_starts(b.pad, e.pos_start, T, job.last).tolist()
        if isinstance(e, Add) and e.site == "sae":
            sae = job.features.saes[job.features.entries[e.entry][0]]
            hooks.append((sae.site, index_feature_edit(job.features, e.entry, starts,
                                                       st.patch)))
        elif isinstance(e, Add):
            hooks.append((f"L{e.layer}.resid_post", index_steer(job.additions, e.entry, starts)))
        else:
            hooks.append((f"L{e.layer}.{e.site}", index_edit(
                e, starts, fill.get(e.mode, {}).get((e.layer, e.site)))))
    if metric.reads == "resid":
        hooks.append(readout_hook(model, metric, seen))
    with ExitStack() as stack:
        for iv in variant:
            if not isinstance(iv, (Edit, Add)):
                stack.enter_context(iv.take(slice(b.start, b.stop), P).hooks(model))
        stack.enter_context(model.hooks(hooks))
        overflow = stack.enter_context(model.overflow_watch())
        logits = model.forward(b.ids, b.mask, logits_to_keep=1).logits[:, -1].float()  # [P, V]
    r = (Readout(logits, st.readout.clean_logprobs, None)
         if metric.reads == "logits" else Readout(None, None, seen["resid"]))
    return overflowed_to_nan(metric(r), overflow)


def index_edit(e: Edit, starts: list[int], fill: torch.Tensor | None):
    """Hook: act [B, T, d_mlp] or [B, T, H, d_head]; row b, positions >= starts[b], the units
    (dim 2: neurons or heads) := 0, their mean (fill [units, ...]) or the source's activation
    (fill [B, T, W], flattened like act)."""
    units = list(e.units)

    def fn(act, site):
        act = act.clone()
        for b, s in enumerate(starts):
            if fill is None:
                act[b, s:, units] = 0.0
            elif e.mode == "patch":
                act[b, s:, units] = fill.view_as(act)[b, s:, units]
            else:
                act[b, s:, units] = fill[units].to(act)
        return act
    return fn
