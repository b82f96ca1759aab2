"""The batched sweep engine's executor: one chunk of variants from the clean run's cached state.

For a chunk whose edits all sit at layers >= f and real-token positions >= p, every row of the
chunk computes exactly what the clean run computed below layer f and before position s (s = p,
or T - 1 when only the last token is edited). So `run_chunk` runs only the rest:
- layers < f are swapped for `_Skip` modules inside the unmodified HF forward; the last one
  returns the clean resid_pre of layer f (positions >= s), shared by every variant;
- positions < s come from the clean key/value cache (`past_key_values`), so layers >= f compute
  T - s positions per row, one position per layer when the last token is edited;
- only the last position goes through the final norm and the unembedding.
Rows are variant-major: row r = variant r // P, prompt r % P. The clean pass (`clean_pass`)
reads everything the chunks need in one forward per prompt batch.

KV reuse is exact for causal attention. It is off (s = 0: positions recomputed, layers still
shared) where a sliding or local attention window is shorter than the batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from transformers import DynamicCache

from .kernels import masked_ablate
from .models import Model
from .planner import Chunk
from .sweep_metrics import Metric, Readout
from .sweep_steer import SteerTable, rows_steer


class Batch(NamedTuple):
    """One left-padded prompt batch: prompts start..stop-1 of the sweep."""
    ids: torch.Tensor           # [P, T] on the model's device
    mask: torch.Tensor          # [P, T]
    pad: torch.Tensor           # [P] pad tokens in front of each row
    start: int
    stop: int


@dataclass
class CleanState:
    """What the clean run of one batch leaves for the chunks."""
    batch: Batch
    readout: Readout                                   # [P, ...] at the last token
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer [P, kv_heads, T, d_head]
    resid_pre: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [P, T, d_model]
    tuple_blocks: bool = False  # decoder layers return (hidden, ...) (GPT-Neo), not a tensor
    patch: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # [P, T, W] source


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from the attention mask, so left padding changes nothing (as Model.forward)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def padded_starts(pad: torch.Tensor, pos_start: torch.Tensor | int, T: int,
                  last: bool) -> torch.Tensor:
    """Real-token pos_start -> the first padded position edited, per row [B] (left padding:
    pad + pos_start; "last": T - 1; T: the row is not edited)."""
    if last:
        return torch.full_like(pad, T - 1)
    return (pad + pos_start).clamp(max=T)


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


def _readout(model: Model, metric: Metric, hidden_last: torch.Tensor, seen: dict,
             clean_logprobs: torch.Tensor | None) -> Readout:
    """Readout from the final-normed hidden state at T-1 [B, d_model]."""
    if metric.reads == "logits":
        logits = model.hf.get_output_embeddings()(hidden_last).float()   # [B, vocab]
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
        returns = []
        probe = model.adapter.blocks[0].register_forward_hook(
            lambda module, args, output: returns.append(isinstance(output, tuple)))
        try:
            with model.hooks(hooks):
                out = model.hf.base_model(input_ids=b.ids, attention_mask=b.mask,
                                          position_ids=position_ids(b.mask), use_cache=keep)
        finally:
            probe.remove()
        hidden_last = out.last_hidden_state[:, -1]
        logprobs = None
        if metric.reads == "logits":
            logprobs = model.hf.get_output_embeddings()(hidden_last).float().log_softmax(-1)
        kv = None
        if keep:
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        states.append(CleanState(b, _readout(model, metric, hidden_last, seen, logprobs), kv,
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


def run_chunk(model: Model, state: CleanState, chunk: Chunk, metric: Metric, *,
              fills: dict, last: bool, steer: SteerTable | None = None) -> torch.Tensor:
    """Metric values [V_c * P] (variant-major) of the chunk's variants on one batch; `steer`
    holds the entries its "steer" edits index (`emofast.sweep_steer`)."""
    b, L = state.batch, model.n_layers
    V_c, P, T = len(chunk.variant_ids), b.stop - b.start, b.ids.shape[1]
    f = chunk.first_layer
    if f >= L or metric.reads == "resid" and metric.resid_layer(L) < f:  # read is clean
        return metric(repeat_readout(state.readout, V_c))
    s = 0
    if state.kv is not None:
        s = T - 1 if last else min(chunk.pos_start, T - 1)
    dev = b.ids.device
    row_variant = torch.arange(V_c, device=dev).repeat_interleave(P)      # [V_c * P]
    hooks, seen = [], {}
    for key, mask in chunk.masks.items():
        layer, site = key
        p_row = chunk.pos_starts[key].to(dev).repeat_interleave(P)        # [V_c * P] real p
        start = padded_starts(b.pad.repeat(V_c), p_row, T, last)
        mode, row_start = chunk.modes[key], (start - s).clamp(0, T - s)
        if mode == "steer":
            hooks.append((f"L{layer}.resid_post", rows_steer(steer, mask, row_variant, row_start)))
            continue
        fill = (fills.get(key) if mode == "mean" else
                state.patch[key][:, s:].repeat(V_c, 1, 1) if mode == "patch" else None)
        hooks.append((f"L{layer}.{site}", _masked_edit(
            row_variant, mask.to(dev), mode, fill, model.d_head if site == "attn_z" else 1,
            row_start)))
    if metric.reads == "resid":
        hooks.append(readout_hook(model, metric, seen))
    cache = None
    if s > 0:
        cache = DynamicCache(config=model.hf.config)
        for layer, (k, v) in enumerate(state.kv):
            # layers < f are skipped: they only need a length (get_seq_length reads layer 0)
            n = V_c if layer >= f else 1
            cache.update(k[:, :, :s].repeat(n, 1, 1, 1), v[:, :, :s].repeat(n, 1, 1, 1), layer)
    mask = b.mask.repeat(V_c, 1)
    start_hidden = state.resid_pre[f][:, s:].repeat(V_c, 1, 1) if f > 0 else None
    with _skip_layers(model, f, start_hidden, state.tuple_blocks), model.hooks(hooks):
        out = model.hf.base_model(input_ids=b.ids[:, s:].repeat(V_c, 1), attention_mask=mask,
                                  position_ids=position_ids(mask)[:, s:],
                                  past_key_values=cache, use_cache=cache is not None)
    clean = None
    if metric.reads == "logits":
        clean = state.readout.clean_logprobs.repeat(V_c, 1)
    return metric(_readout(model, metric, out.last_hidden_state[:, -1], seen, clean))


def _masked_edit(row_variant, mask, mode, fill, group, pos_start):
    """Hook: every row's own edit in one masked_ablate call (attn_z flattened to H * d_head)."""
    def fn(act, site):
        x = act.flatten(2)                                                # [B, T, W]
        return masked_ablate(x, row_variant, mask, mode=mode, fill=fill, group=group,
                             pos_start=pos_start).view_as(act)
    return fn


class _Skip(nn.Module):
    """Stands in for a decoder layer below the chunk's first edited layer: passes the hidden
    state through, or (the last one) replaces it by the cached clean residual."""

    def __init__(self, out: torch.Tensor | None, as_tuple: bool):
        super().__init__()
        self.out, self.as_tuple = out, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        h = hidden_states if self.out is None else self.out
        return (h,) if self.as_tuple else h


@contextmanager
def _skip_layers(model: Model, first: int, start_hidden: torch.Tensor | None, as_tuple: bool):
    """Swap decoder layers 0..first-1 for `_Skip`s for the duration (restored on exit)."""
    blocks = model.adapter.blocks
    saved = [blocks[i] for i in range(first)]
    try:
        for i in range(first):
            blocks[i] = _Skip(start_hidden if i == first - 1 else None, as_tuple)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block
