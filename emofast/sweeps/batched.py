"""The batched engine: the planner's chunks, each run from the clean run's cached state.

For a chunk whose edits all sit at layers >= f and real-token positions >= p, every row of the
chunk computes exactly what the clean run computed below layer f and before position s (s = p,
or T - 1 when only the last token is edited). So `run_chunk` runs only the rest:
- layers < f are skipped (`emofast.models.prefix.skip_layers`); the last one returns the
  clean resid_pre of layer f (positions >= s), shared by every variant;
- positions < s come from the clean key/value cache (`cache=`), so layers >= f compute
  T - s positions per row, one position per layer when the last token is edited;
- each row's ablation is applied by `masked_ablate`, each row's addition by `steer_add`, each
  row's SAE feature edit by `features.rows_feature_edit`;
- only the last position goes through the final norm and the unembedding.
Rows are variant-major: row r = variant r // P, prompt r % P. On an out-of-memory error a chunk
halves and retries from the failing prompt batch.
"""
from __future__ import annotations

import os

import torch
from transformers import DynamicCache

from ..kernels import masked_ablate
from ..models import Model, kv_cache_kwargs, position_ids
from ..models.prefix import skip_layers
from .batches import padded_starts
from .clean import CleanState, clean_pass, readout, readout_hook, repeat_readout
from .features import FeatureTable, rows_feature_edit
from .job import Job, finish, source_keys
from .metrics import Metric, overflowed_to_nan
from .plan import Chunk, plan_sweep
from .steer import AdditionTable, rows_steer


def run_batched(job: Job, todo: list[int]) -> int:
    """Plan chunks of the variants still to do; run each on every batch, halving on OOM.
    Returns the number of halvings."""
    model, batches, per_prompt = job.model, job.batches, job.per_prompt
    T_max = max(b.ids.shape[1] for b in batches)
    n_units = {"mlp_act": model.d_mlp, "attn_z": model.n_heads}
    if job.additions is not None:
        n_units["resid_post"] = len(job.additions)
    if job.features is not None:
        n_units["sae"] = len(job.features)
    plan = plan_sweep([job.variants[i] for i in todo], n_layers=model.n_layers, n_units=n_units,
                      n_prompts=max(b.stop - b.start for b in batches),
                      bytes_per_row_per_layer=_row_layer_bytes(model, T_max),
                      memory_budget=job.memory_budget or default_memory_budget(model.device))
    todo_t = torch.tensor(todo, dtype=torch.long)
    keys = {"mean": {k for c in plan.chunks for k, blk in c.blocks.items() if blk.mode == "mean"},
            "patch": source_keys(job, [job.variants[i] for i in todo])}
    states, means = clean_pass(model, batches, job.metric, mean_keys=keys["mean"], keep_kv=True,
                               first_layers={c.first_layer for c in plan.chunks},
                               sources=job.sources, patch_keys=keys["patch"], last=job.last)
    fills = {k: m.flatten() for k, m in means.items()}                   # [W]
    splits = 0

    def run(chunk: Chunk, first_batch: int) -> None:
        nonlocal splits
        ids = todo_t[chunk.variant_ids].to(per_prompt.device)            # sweep variant ids
        for j in range(first_batch, len(states)):
            b = states[j].batch
            try:
                vals = run_chunk(model, states[j], chunk, job.metric, fills=fills, last=job.last,
                                 additions=job.additions, features=job.features)
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
            per_prompt[ids, b.start:b.stop] = vals.view(len(ids), -1)

    for chunk in plan.chunks:
        run(chunk, 0)
        finish(job, todo_t[chunk.variant_ids])
    return splits


def run_chunk(model: Model, state: CleanState, chunk: Chunk, metric: Metric, *,
              fills: dict, last: bool, additions: AdditionTable | None = None,
              features: FeatureTable | None = None) -> torch.Tensor:
    """Metric values [V_c * P] (variant-major) of the chunk's variants on one batch;
    `additions` and `features` hold the entries its Add blocks index (`emofast.sweeps.steer`,
    `emofast.sweeps.features`)."""
    b, L = state.batch, model.n_layers
    V_c, T = len(chunk.variant_ids), b.ids.shape[1]
    f = chunk.first_layer
    if f >= L or metric.reads == "resid" and metric.resid_layer(L) < f:  # read is clean
        return metric(repeat_readout(state.readout, V_c))
    s = 0
    if state.kv is not None:
        s = T - 1 if last else min(chunk.pos_start, T - 1)
    seen = {}
    hooks = _chunk_hooks(model, state, chunk, fills, last, additions, s, features)
    if metric.reads == "resid":
        hooks.append(readout_hook(model, metric, seen))
    mask = b.mask.repeat(V_c, 1)
    start_hidden = state.resid_pre[f][:, s:].repeat(V_c, 1, 1) if f > 0 else None
    cache = _prefix_cache(model, state, V_c, f, s)
    with skip_layers(model, f, start_hidden, state.tuple_blocks), model.hooks(hooks), \
            model.overflow_watch() as overflow:
        out = model.hf.base_model(input_ids=b.ids[:, s:].repeat(V_c, 1), attention_mask=mask,
                                  position_ids=position_ids(mask)[:, s:],
                                  **kv_cache_kwargs(model.hf.base_model, cache,
                                                    cache is not None))
    clean = None
    if metric.reads == "logits":
        clean = state.readout.clean_logprobs.repeat(V_c, 1)
    return overflowed_to_nan(metric(readout(model, metric, out.last_hidden_state[:, -1], seen,
                                            clean)), overflow)


def _chunk_hooks(model: Model, state: CleanState, chunk: Chunk, fills: dict, last: bool,
                 additions: AdditionTable | None, s: int,
                 features: FeatureTable | None = None) -> list:
    """One hook per block: every row's own edit of the positions >= s the forward computes."""
    b = state.batch
    V_c, P, T = len(chunk.variant_ids), b.stop - b.start, b.ids.shape[1]
    dev = b.ids.device
    row_variant = torch.arange(V_c, device=dev).repeat_interleave(P)      # [V_c * P]
    hooks = []
    for (layer, site), block in chunk.blocks.items():
        p_row = block.pos_start.to(dev).repeat_interleave(P)              # [V_c * P] real p
        start = padded_starts(b.pad.repeat(V_c), p_row, T, last)
        row_start = (start - s).clamp(0, T - s)
        if site == "sae":
            patch = {k: v[:, s:].repeat(V_c, 1, 1) for k, v in state.patch.items()
                     if k in features.keys("patch")}
            hooks.extend(rows_feature_edit(features, block.entries, row_variant, row_start,
                                           patch))
            continue
        if block.mode == "add":
            hooks.append((f"L{layer}.resid_post",
                          rows_steer(additions, block.entries, row_variant, row_start)))
            continue
        fill = (fills.get((layer, site)) if block.mode == "mean" else
                state.patch[(layer, site)][:, s:].repeat(V_c, 1, 1) if block.mode == "patch"
                else None)
        hooks.append((f"L{layer}.{site}", _masked_edit(
            row_variant, block.mask.to(dev), block.mode, fill,
            model.d_head if site == "attn_z" else 1, row_start)))
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
        x = act.flatten(2)                                                # [B, T, W]
        return masked_ablate(x, row_variant, mask, mode=mode, fill=fill, group=group,
                             pos_start=pos_start).view_as(act)
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
