"""The batched engine: the planner's chunks, each run from the clean run's cached state.

For a chunk whose edits all sit at layers >= f and real-token positions >= p, every row of the
chunk computes exactly what the clean run computed below layer f and before position s (s = p,
or T - 1 when only the last token is edited). So `run_chunk` runs only the rest:
- layers < f are skipped (`emofast.models.prefix.skip_layers`); the last one returns the
  clean resid_pre of layer f (positions >= s), shared by every variant;
- positions < s come from the clean key/value cache (`cache=`), so layers >= f compute
  T - s positions per row, one position per layer when the last token is edited;
- when s = 0 and prompts of the batch begin with the same tokens, each shared prefix runs once
  per variant and the prompts' suffixes attend to its keys/values (`emofast.sweeps.shared`);
- each row's ablation is applied by `masked_ablate`, each row's addition by `steer_add`, each
  row's SAE feature edit by `features.rows_feature_edit`;
- only the last position goes through the final norm and the unembedding.
Rows are variant-major: row r = variant r // P, prompt r % P. On an out-of-memory error a chunk
halves and retries from the failing prompt batch.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch
from transformers import DynamicCache

from ..kernels import masked_ablate
from ..models import Model, kv_cache_kwargs, position_ids, returned_cache
from ..models.prefix import skip_layers
from .batches import padded_starts
from .clean import CleanState, clean_pass, readout, readout_hook, repeat_readout
from .features import FeatureTable, rows_feature_edit
from .job import Job, finish, source_keys
from .metrics import Metric, overflowed_to_nan
from .plan import Chunk, plan_sweep
from .shared import PrefixGroups, prefix_groups
from .steer import AdditionTable, rows_steer


def plan_job(job: Job, todo: list[int]):
    """The planner's chunks for the job's variants `todo`."""
    model, batches = job.model, job.batches
    T_max = max(b.ids.shape[1] for b in batches)
    n_units = {"mlp_act": model.d_mlp, "attn_z": model.n_heads}
    if job.additions is not None:
        n_units["resid_post"] = len(job.additions)
    if job.features is not None:
        n_units["sae"] = len(job.features)
    return plan_sweep([job.variants[i] for i in todo], n_layers=model.n_layers, n_units=n_units,
                      n_prompts=max(b.stop - b.start for b in batches),
                      bytes_per_row_per_layer=_row_layer_bytes(model, T_max),
                      memory_budget=job.memory_budget or default_memory_budget(model.device))


def run_batched(job: Job, todo: list[int]) -> int:
    """Plan chunks of the variants still to do; run each on every batch, halving on OOM.
    Returns the number of halvings."""
    model, batches, per_prompt = job.model, job.batches, job.per_prompt
    plan = plan_job(job, todo)
    todo_t = torch.tensor(todo, dtype=torch.long)
    keys = {"mean": {k for c in plan.chunks for k, blk in c.blocks.items() if blk.mode == "mean"},
            "patch": source_keys(job, [job.variants[i] for i in todo])}
    states, means = clean_pass(model, batches, job.metric, mean_keys=keys["mean"], keep_kv=True,
                               first_layers={c.first_layer for c in plan.chunks},
                               sources=job.sources, patch_keys=keys["patch"], last=job.last)
    fw = Forward({k: m.flatten() for k, m in means.items()}, job.last, job.additions,
                 job.features, job.metric)
    shared = [None if job.last or st.kv is None else prefix_groups(st.batch) for st in states]
    splits = 0

    def run(chunk: Chunk, first_batch: int) -> None:
        nonlocal splits
        ids = todo_t[chunk.variant_ids].to(per_prompt.device)            # sweep variant ids
        for j in range(first_batch, len(states)):
            b = states[j].batch
            try:
                vals = run_chunk(model, states[j], chunk, fw, shared=shared[j])
            except torch.OutOfMemoryError:
                V_c = len(chunk.variant_ids)
                if V_c == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                splits += 1
                job.bar.write(f"sweep: out of memory with {V_c} variants x {b.stop - b.start} "
                              f"prompts; halving the chunk")
                run(chunk.take(slice(0, V_c // 2)), j)
                run(chunk.take(slice(V_c // 2, V_c)), j)
                return
            per_prompt[ids, b.start:b.stop] = vals.view(len(ids), -1).to(per_prompt.device)

    for chunk in plan.chunks:
        run(chunk, 0)
        finish(job, todo_t[chunk.variant_ids])
    return splits


class Forward(NamedTuple):
    """What every chunk's forward needs besides the chunk: the mean fills [W] per (layer, site),
    the scope, the Steer and SAE feature tables, the metric."""
    fills: dict
    last: bool
    additions: AdditionTable | None
    features: FeatureTable | None
    metric: Metric


def run_chunk(model: Model, state: CleanState, chunk: Chunk, fw: Forward, *,
              shared: PrefixGroups | None = None, start=None,
              capture: dict | None = None) -> torch.Tensor:
    """Metric values [V_c * P] (variant-major) of the chunk's variants on one batch. `shared`:
    the batch's prompts grouped by shared prefixes (`emofast.sweeps.shared`), used when the
    chunk edits from position 0 without patching. `start`: the residual entering
    chunk.first_layer (default the clean run's), in the layout of the run taken: a tensor
    [V_c * P, T, d] or, with `shared`, (prefix [V_c * G, Tp, d], suffix [V_c * P, Ts, d]).
    `capture`: {layer: None}, filled with the residual entering each of those layers (> first
    layer) in the same layout (`emofast.sweeps.chain` starts the next variant from them)."""
    b, L, metric = state.batch, model.n_layers, fw.metric
    V_c, T = len(chunk.variant_ids), b.ids.shape[1]
    f = chunk.first_layer
    if f >= L or metric.reads == "resid" and metric.resid_layer(L) < f:  # read is clean
        return metric(repeat_readout(state.readout, V_c))
    s = 0
    if state.kv is not None:
        s = T - 1 if fw.last else min(chunk.pos_start, T - 1)
    with model.overflow_watch() as overflow:
        if s == 0 and shared is not None and not _patches(chunk, fw.features):
            hidden_last, seen = _run_shared(model, state, chunk, fw, shared, start, capture)
        else:
            hidden_last, seen = _run_plain(model, state, chunk, fw, s, start, capture)
    clean = None
    if metric.reads == "logits":
        clean = state.readout.clean_logprobs.repeat(V_c, 1)
    return overflowed_to_nan(metric(readout(model, metric, hidden_last, seen, clean)), overflow)


def _run_plain(model, state, chunk, fw: Forward, s: int, start, capture):
    """One forward: positions >= s of every (variant, prompt) row, positions < s from the clean
    key/value cache. Returns (final hidden state at T-1 [V_c * P, d], the metric's reads)."""
    b, f, V_c = state.batch, chunk.first_layer, len(chunk.variant_ids)
    T, seen = b.ids.shape[1], {}
    pad = b.pad.repeat(V_c)
    rows = _Rows(b.ids.device, b.stop - b.start,
                 lambda p: (padded_starts(pad, p, T, fw.last) - s).clamp(0, T - s),
                 {k: v[:, s:].repeat(V_c, 1, 1) for k, v in state.patch.items()})
    hooks = _chunk_hooks(chunk, fw, rows, model.d_head) + _capturing(capture)
    if fw.metric.reads == "resid":
        hooks.append(readout_hook(model, fw.metric, seen))
    mask = b.mask.repeat(V_c, 1)
    if start is None and f > 0:
        start = state.resid_pre[f][:, s:].repeat(V_c, 1, 1)
    cache = _prefix_cache(model, state, V_c, f, s)
    with skip_layers(model, f, start, state.tuple_blocks), model.hooks(hooks):
        out = model.hf.base_model(input_ids=b.ids[:, s:].repeat(V_c, 1), attention_mask=mask,
                                  position_ids=position_ids(mask)[:, s:],
                                  **kv_cache_kwargs(model.hf.base_model, cache,
                                                    cache is not None))
    return out.last_hidden_state[:, -1], seen


def _run_shared(model, state, chunk, fw: Forward, groups: PrefixGroups, start, capture):
    """Two forwards (`emofast.sweeps.shared`): each group's prefix once per variant, then every
    prompt's suffix on its group's prefix keys/values. Returns what `_run_plain` returns."""
    b, f, V_c, L = state.batch, chunk.first_layer, len(chunk.variant_ids), model.n_layers
    base, G, P, seen = model.hf.base_model, len(groups.lens), b.stop - b.start, {}
    if start is None and f > 0:
        start = (groups.prefix_of(state.resid_pre[f]).repeat(V_c, 1, 1),
                 groups.suffix_of(state.resid_pre[f]).repeat(V_c, 1, 1))
    starts = start or (None, None)
    pre = _Rows(b.ids.device, G, lambda p: groups.prefix_starts(p, V_c), {})
    prefixes = {layer: None for layer in capture or ()}
    mask = groups.prefix_mask.repeat(V_c, 1)
    hooks = _chunk_hooks(chunk, fw, pre, model.d_head) + _capturing(prefixes)
    with skip_layers(model, f, starts[0], state.tuple_blocks), model.hooks(hooks):
        out = base(input_ids=groups.prefix_ids.repeat(V_c, 1), attention_mask=mask,
                   position_ids=position_ids(mask),
                   **kv_cache_kwargs(base, DynamicCache(config=model.hf.config), True))
    prefix_kv = returned_cache(out).layers
    row_group = (torch.arange(V_c, device=b.ids.device) * G).repeat_interleave(P) \
        + groups.group.repeat(V_c)                                          # [V_c * P]
    cache = DynamicCache(config=model.hf.config)
    for layer in range(L):
        k, v = prefix_kv[max(layer, f)].keys, prefix_kv[max(layer, f)].values
        if layer < f:          # skipped: only a length is read (get_seq_length of layer 0)
            k, v = k[:1], v[:1]
        else:
            k, v = k[row_group.to(k.device)], v[row_group.to(v.device)]
        cache.update(k, v, layer)
    suf = _Rows(b.ids.device, P, lambda p: groups.suffix_starts(p, V_c), {})
    hooks = _chunk_hooks(chunk, fw, suf, model.d_head) + _capturing(
        capture, lambda x, layer: (prefixes[layer], x))
    if fw.metric.reads == "resid":
        hooks.append(readout_hook(model, fw.metric, seen))
    with skip_layers(model, f, starts[1], state.tuple_blocks), model.hooks(hooks):
        out = base(input_ids=groups.suffix_ids.repeat(V_c, 1),
                   attention_mask=groups.suffix_attention_mask().repeat(V_c, 1),
                   position_ids=groups.suffix_pos.repeat(V_c, 1),
                   **kv_cache_kwargs(base, cache, True))
    return out.last_hidden_state[:, -1], seen


def _capturing(capture: dict | None, value=lambda act, layer: act) -> list:
    """resid_pre hooks that store value(act, layer) into capture[layer]."""
    def fn(act, site):
        capture[site.layer] = value(act, site.layer)
    return [(f"L{layer}.resid_pre", fn) for layer in capture or ()]


def _patches(chunk: Chunk, features: FeatureTable | None) -> bool:
    """Whether the chunk patches from per-prompt sources (shared prefixes would mix them)."""
    return any(blk.mode == "patch" for blk in chunk.blocks.values()) or bool(
        features is not None and features.keys("patch")
        and any(site == "sae" for _, site in chunk.blocks))


class _Rows(NamedTuple):
    """A forward's rows: `per_variant` rows per variant (variant-major), the first column each
    row edits from its real-token start [V_c * per_variant], patch sources in this layout."""
    device: torch.device
    per_variant: int
    starts: Callable[[torch.Tensor], torch.Tensor]
    patch: dict


def _chunk_hooks(chunk: Chunk, fw: Forward, rows: _Rows, d_head: int) -> list:
    """One hook per block: every row's own edit of the positions the forward computes."""
    V_c, R, dev = len(chunk.variant_ids), rows.per_variant, rows.device
    row_variant = torch.arange(V_c, device=dev).repeat_interleave(R)      # [V_c * R]
    hooks = []
    for (layer, site), block in chunk.blocks.items():
        row_start = rows.starts(block.pos_start.to(dev).repeat_interleave(R))  # real p -> column
        if site == "sae":
            patch = {k: v for k, v in rows.patch.items() if k in fw.features.keys("patch")}
            hooks.extend(rows_feature_edit(fw.features, block.entries, row_variant, row_start,
                                           patch))
            continue
        if block.mode == "add":
            hooks.append((f"L{layer}.resid_post",
                          rows_steer(fw.additions, block.entries, row_variant, row_start)))
            continue
        fill = (fw.fills.get((layer, site)) if block.mode == "mean" else
                rows.patch[(layer, site)] if block.mode == "patch" else None)
        hooks.append((f"L{layer}.{site}", _masked_edit(
            row_variant, block.mask.to(dev), block.mode, fill,
            d_head if site == "attn_z" else 1, row_start)))
    return hooks


def _prefix_cache(model: Model, state: CleanState, V_c: int, f: int, s: int):
    """The clean keys and values of positions < s for the chunk's rows (None when s = 0)."""
    if s == 0:
        return None
    cache = DynamicCache(config=model.hf.config)
    for layer, (k, v) in enumerate(state.kv):
        # layers < f are skipped: they only need a length (get_seq_length reads layer 0)
        n = V_c if layer >= f else 1
        cache.update(k[:, :, :s].repeat(n, 1, 1, 1), v[:, :, :s].repeat(n, 1, 1, 1), layer)
    return cache


def _masked_edit(row_variant, mask, mode, fill, group, pos_start):
    """Hook: every row's own edit in one masked_ablate call (attn_z flattened to H * d_head)."""
    def fn(act, site):
        x, dev = act.flatten(2), act.device                               # [B, T, W]
        # a device map may put the layer elsewhere than the rows' tables (no-op otherwise)
        return masked_ablate(x, row_variant.to(dev), mask.to(dev), mode=mode,
                             fill=None if fill is None else fill.to(dev), group=group,
                             pos_start=pos_start.to(dev)).view_as(act)
    return fn


def _row_layer_bytes(model: Model, T: int) -> int:
    """Planner estimate per batch row per layer run: the key/value cache (2 x kv heads x d_head)
    plus one layer's working set (d_mlp + 4 d_model), over T tokens. Rough: an OOM halves."""
    cfg = model.hf.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or model.n_heads
    width = 2 * kv_heads * model.d_head + model.d_mlp + 4 * model.d_model
    return T * width * next(model.hf.parameters()).element_size()


def default_memory_budget(device: torch.device) -> int:
    """A quarter of the free memory of `device` (CUDA: free GPU memory; CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
