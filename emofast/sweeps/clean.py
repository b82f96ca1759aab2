"""The clean run of a sweep: one forward per prompt batch that reads what every chunk needs.

`clean_pass` leaves, per batch, a `CleanState`: the metric's clean readout at the last token,
the key/value cache (when it can be reused), the clean resid_pre of every layer a chunk starts
at, and the source run's activations for patch edits; plus the mean activation of every (layer,
site) a mean edit fills. Rows are variant-major when repeated: row r = variant r // P, prompt
r % P (`repeat_readout`).

KV reuse is exact for causal attention. It is off where a sliding or local attention window is
shorter than the batch (`reuses_kv`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import Model, position_ids, returned_cache
from ..models.prefix import blocks_return_tuple
from .batches import Batch
from .metrics import Metric, Readout


@dataclass
class CleanState:
    """What the clean run of one batch leaves for the chunks."""
    batch: Batch
    readout: Readout                                   # [P, ...] at the last token
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer [P, kv_heads, T, d_head]
    resid_pre: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [P, T, d_model]
    tuple_blocks: bool = False  # decoder layers return (hidden, ...) (GPT-Neo), not a tensor
    patch: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # [P, T, W] source


def reuses_kv(model: Model, T: int) -> bool:
    """False where a sliding/local attention window (window_size, sliding_window) is < T."""
    cfg = model.hf.config
    windows = [w for w in (getattr(cfg, "sliding_window", None), getattr(cfg, "window_size", None))
               if isinstance(w, int)]
    return all(T < w for w in windows)


def readout_hook(model: Model, metric: Metric, out: dict):
    """(site, hook) that stores resid_post [B, d_model] of the metric's layer at T-1."""
    def read(act, site):
        out["resid"] = act[:, -1].float()
    return (f"L{metric.resid_layer(model.n_layers)}.resid_post", read)


def readout(model: Model, metric: Metric, hidden_last: torch.Tensor, seen: dict,
             clean_logprobs: torch.Tensor | None) -> Readout:
    """Readout from the final-normed hidden state at T-1 [B, d_model]."""
    if metric.reads == "logits":
        logits = model.unembed(hidden_last)   # [B, vocab]
        return Readout(logits, clean_logprobs, None)
    return Readout(None, None, seen["resid"])


def clean_pass(model: Model, batches: list[Batch], metric: Metric, *, first_layers: set[int],
               mean_keys: set[tuple[int, str]], keep_kv: bool,
               sources: list[Batch] | None = None, patch_keys: set[tuple[int, str]] = frozenset(),
               last: bool = False):
    """One clean forward per batch -> ([CleanState], {(layer, site): mean over all real tokens
    of all prompts: mlp_act [d_mlp], attn_z [H, d_head]}). With `sources` (batches aligned with
    `batches`), each state's `patch` holds the source run's activations at `patch_keys`,
    flattened to [P, T, W] on the prompt batch's positions (last: the source's last token at
    T-1; else position for position, the lengths being equal)."""
    sums, count, states = {k: 0.0 for k in mean_keys}, 0, []
    for b in batches:
        real, seen, resid_pre = b.mask.bool(), {}, {}

        def read_mean(act, site):
            sums[(site.layer, site.kind)] += act[real].double().sum(0)

        def read_resid_pre(act, site):
            resid_pre[site.layer] = act

        hooks = [(f"L{layer}.{site}", read_mean) for layer, site in mean_keys]
        hooks += [(f"L{layer}.resid_pre", read_resid_pre) for layer in first_layers
                  if 0 < layer < model.n_layers]
        if metric.reads == "resid":
            hooks.append(readout_hook(model, metric, seen))
        keep = keep_kv and reuses_kv(model, b.ids.shape[1])
        with blocks_return_tuple(model) as returns, model.hooks(hooks):
            out = model.hf.base_model(input_ids=b.ids, attention_mask=b.mask,
                                      position_ids=position_ids(b.mask), use_cache=keep)
        hidden_last = out.last_hidden_state[:, -1]
        logprobs = None
        if metric.reads == "logits":
            logprobs = model.unembed(hidden_last).log_softmax(-1)
        kv = None
        if keep:
            kv = [(layer.keys, layer.values) for layer in returned_cache(out).layers]
        states.append(CleanState(b, readout(model, metric, hidden_last, seen, logprobs), kv,
                                 resid_pre, returns[0]))
        if sources is not None and patch_keys:
            states[-1].patch = _source_acts(model, sources[len(states) - 1], patch_keys,
                                            b.ids.shape[1], last)
        count += int(real.sum())
    return states, {k: (s / count).float() for k, s in sums.items()}


def _source_acts(model: Model, src: Batch, keys, T: int, last: bool) -> dict:
    acts = {}

    def read(act, site):
        a = act.flatten(2)                                                 # [P, T_src, W]
        acts[(site.layer, site.kind)] = a[:, -1:].expand(-1, T, -1).contiguous() if last else a
    with model.hooks([(f"L{layer}.{site}", read) for layer, site in keys]):
        model.hf.base_model(input_ids=src.ids, attention_mask=src.mask,
                            position_ids=position_ids(src.mask), use_cache=False)
    return acts


def repeat_readout(r: Readout, n: int) -> Readout:
    """The clean readout of P prompts as n variants' rows [n * P, ...] (variant-major)."""
    return Readout(*(None if t is None else t.repeat(n, *[1] * (t.dim() - 1)) for t in r))
