"""Ablation sweeps: prompts x variants x metric, run one variant at a time or batched.

    from emofast.planner import Edit
    variants = [[Edit(3, "attn_z", [h])] for h in range(model.n_heads)]        # one head each
    variants += [[Edit(5, "mlp_act", neurons, mode="mean")]]                    # a neuron set
    res = sweep(model, prompts, variants, LogitDiff([pos_id], [neg_id]), positions="last",
                out="runs/heads")                  # resumable; writes results.json
    res.values        # [n_variants] mean over prompts;  res.per_prompt [n_variants, n_prompts]

A variant is a list of `Edit`s and `Steer`s (none = the clean run). A `Steer(layer, vector,
alpha)` adds a steering vector to resid_post of the layer (`emofast.sweep_steer`; `steer_grid`
builds an emotion x layer x alpha grid). Edit units: mlp_act edits neurons, attn_z edits heads.
Modes: "zero" sets the units to 0; "mean" sets them to their mean activation over every
real token of every prompt, read at that (layer, site) in one clean pass (both engines share it);
"patch" sets them to their activation in a source run: `sources` gives one source text per
prompt (e.g. an emotional version of a neutral prompt), patched position for position, so each
pair must have the same token count, except with positions="last" (last token into last token).

Positions. Every prompt batch is LEFT-padded, so each row's last real token sits at T-1, and
position ids come from the attention mask (padding does not change the model's output). An
edit's scope counts real tokens of each prompt: `Edit.pos_start = p` edits real tokens >= p (in
row b: padded positions >= pad_b + p; a prompt with <= p tokens is not edited). `positions`
sets one scope for the whole sweep: "all" (each Edit's own pos_start, 0 = every token), "last"
(only each prompt's last token) or an int p (real tokens >= p); with "last" or an int, the Edits
must leave pos_start at 0. Pad positions are never edited.

Metrics (`emofast.sweep_metrics`: KL, LogitDiff, LogProb, Projection, ProbeProb) read each
prompt's last real token. They run on the device over all rows of a forward at once; the host
reads results once per stored piece (with `out`) or once at the end.

Engines. "loop" is the reference: one hooked forward per variant and prompt batch, edits done by
plain indexing, full logits, as the peers do it. "batched": the planner
(`emofast.planner.plan_sweep`) packs variants into chunks that fit `memory_budget`; a chunk's
variants are folded into the batch (row r = variant r // P, prompt r % P) and run by
`emofast.runner.run_chunk` from the clean run's cached state: layers below the chunk's first
edited layer and positions below its first edited position are not recomputed, each row's edit
is applied by `masked_ablate` (a Steer by `steer_add`), and only the last position is unembedded. On an out-of-memory
error a chunk halves and retries. Both engines give the same numbers (tests/test_sweep.py).

Output folder (`out`): finished pieces are stored as they complete (`emofast.sweep_store`); a
sweep called again with the same out, model, prompts, variants, metric and positions computes
only what is missing, and the end writes results.json and results.safetensors.
"""
from __future__ import annotations

import os
import time
from typing import Literal, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .models import Model
from .planner import Chunk, Edit, Variant, plan_sweep
from .runner import Batch, clean_pass, padded_starts, readout_hook, run_chunk
from .sweep_metrics import KL, LogitDiff, LogProb, Metric, ProbeProb, Projection, Readout
from .sweep_steer import Steer, SteerTable, index_steer, lower_steers, steer_grid
from .sweep_store import SweepStore, fingerprint, write_results

__all__ = ["sweep", "SweepResult", "Metric", "KL", "LogitDiff", "LogProb", "Projection",
           "ProbeProb", "Steer", "steer_grid", "encode_batches"]
ENGINES = ("batched", "loop")
SWEEP_SITES = ("mlp_act", "attn_z")
SWEEP_MODES = ("zero", "mean", "patch")
LOOP_PIECE = 16  # loop variants per stored piece


class SweepResult(NamedTuple):
    values: torch.Tensor        # [n_variants] fp32, the metric averaged over prompts
    per_prompt: torch.Tensor    # [n_variants, n_prompts] fp32, in the caller's orders
    engine: str                 # "batched" or "loop"
    elapsed_s: float            # wall time of this call, clean pass included
    resumed: int = 0            # variants read back from `out` instead of computed
    splits: int = 0             # chunks halved after running out of memory


@torch.inference_mode()
def sweep(model: Model, prompts: Sequence[str],
          variants: Sequence[Variant | Sequence[Edit | Steer]], metric: Metric, *,
          engine: Literal["batched", "loop"] = "batched",
          positions: Literal["all", "last"] | int = "all", batch_size: int = 32,
          memory_budget: int | None = None, out: str | os.PathLike | None = None,
          sources: Sequence[str] | None = None, progress: bool = True) -> SweepResult:
    """Run every variant on every prompt and measure `metric` (see the module docstring).

    prompts are texts as the model should see them (apply `model.chat_text` first if wanted);
    batch_size prompts share one forward (batched: times the chunk's variants); memory_budget
    (bytes; default a quarter of free device memory) bounds a batched chunk by the planner's
    estimate; loop ignores it. out: a folder for resumable results (see module docstring);
    sources: one source text per prompt, for "patch" edits."""
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a Metric (KL(), LogitDiff(a, b), LogProb(t), "
                        f"Projection(v), ProbeProb(probe, cls)), got {metric!r}")
    head = model.hf.get_output_embeddings()
    metric.check(getattr(head, "out_features", None) or model.hf.config.vocab_size,
                 model.d_model, model.n_layers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget}")
    variants, table = _scoped(model, variants, positions)
    batches = encode_batches(model, prompts, batch_size)
    longest = max(int(b.mask.sum(-1).max()) for b in batches)
    for i, edits in enumerate(variants):
        for e in edits:
            if e.pos_start >= longest:
                raise ValueError(f"variant {i}: pos_start {e.pos_start} edits nothing: the "
                                 f"longest prompt has {longest} tokens (real-token positions "
                                 f"0..{longest - 1})")
    src_batches = _sources(model, batches, variants, sources, positions == "last", batch_size)
    store = None
    if out is not None:
        store = SweepStore(out, fingerprint(model, prompts, variants, metric, positions, sources,
                                            table))
    done = store.done if store else {}
    per_prompt = torch.empty(len(variants), batches[-1].stop, device=model.device)
    for i, row in done.items():
        per_prompt[i] = row.to(per_prompt.device)
    todo = [i for i in range(len(variants)) if i not in done]
    splits = 0
    if todo:
        bar = tqdm(total=len(variants), initial=len(variants) - len(todo), unit="variant",
                   desc=f"sweep ({engine})", disable=not progress)
        job = _Job(model, batches, src_batches, variants, table, metric, positions == "last",
                   per_prompt, store, bar, memory_budget)
        splits = (_run_loop if engine == "loop" else _run_batched)(job, todo)
        bar.close()
    per_prompt = per_prompt.float().cpu()  # the one host sync without `out`
    result = SweepResult(per_prompt.mean(1), per_prompt, engine, time.perf_counter() - t0,
                         len(variants) - len(todo), splits)
    if out is not None:
        write_results(out, result, variants, metric, positions, table)
    return result


class _Job(NamedTuple):
    """Everything an engine needs to run the variants still to do."""
    model: Model
    batches: list[Batch]
    sources: list[Batch] | None
    variants: list[tuple[Edit, ...]]
    steer: SteerTable | None
    metric: Metric
    last: bool
    per_prompt: torch.Tensor    # [n_variants, n_prompts] filled in place
    store: SweepStore | None
    bar: tqdm
    memory_budget: int | None


def _scoped(model: Model, variants, positions) -> tuple[list[tuple[Edit, ...]], SteerTable | None]:
    """Validate the variants, lower Steers to "steer" Edits (their table beside) and apply the
    sweep-wide `positions` (an int p -> pos_start p)."""
    if isinstance(variants, (Edit, Variant, Steer)) or not len(variants):
        raise ValueError("sweep needs a non-empty list of variants, each a list of Edits "
                         "(an empty list is the clean run)")
    if not (positions in ("all", "last") or isinstance(positions, int)
            and not isinstance(positions, bool) and positions >= 0):
        raise ValueError(f"positions must be 'all', 'last' or a real-token index p >= 0 "
                         f"(edit tokens >= p), got {positions!r}")
    lowered, table = lower_steers(variants, model.d_model)
    n_units = {"mlp_act": model.d_mlp, "attn_z": model.n_heads, "resid": len(table or ())}
    out = []
    for i, edits in enumerate(lowered):
        seen = {}
        for e in edits:
            where = f"variant {i}, L{e.layer}.{e.site}"
            if not (e.site in SWEEP_SITES and e.mode in SWEEP_MODES or e.mode == "steer"):
                raise ValueError(f"{where}: sweep runs {'/'.join(SWEEP_MODES)} ablations of "
                                 f"{' or '.join(SWEEP_SITES)} and Steers, got site "
                                 f"{e.site!r}, mode {e.mode!r}")
            if not 0 <= e.layer < model.n_layers:
                raise ValueError(f"{where}: layer {e.layer} out of range: model has "
                                 f"{model.n_layers} layers (0..{model.n_layers - 1})")
            n = n_units[e.site]
            bad = [u for u in e.units if not 0 <= u < n]
            if bad or not e.units:
                raise ValueError(f"{where}: units {list(e.units)} must be a non-empty list in 0.."
                                 f"{n - 1} ({n} {'heads' if e.site == 'attn_z' else 'neurons'})")
            if e.pos_start < 0:
                raise ValueError(f"{where}: pos_start {e.pos_start} must be >= 0")
            if positions != "all" and e.pos_start != 0:
                raise ValueError(f"{where}: pos_start {e.pos_start} together with positions="
                                 f"{positions!r}: set the scope per Edit or for the sweep, "
                                 "not both")
            if seen.setdefault((e.layer, e.site), (e.mode, e.pos_start)) != (e.mode, e.pos_start):
                raise ValueError(f"{where}: edited twice with different mode/pos_start; one "
                                 "(layer, site) takes one mode and pos_start per variant")
        if isinstance(positions, int) and positions > 0:
            edits = tuple(Edit(e.layer, e.site, e.units, e.mode, positions) for e in edits)
        out.append(tuple(edits))
    return out, table


def encode_batches(model: Model, prompts: Sequence[str], batch_size: int) -> list[Batch]:
    """Left-padded prompt batches on the model's device (every row's last token at T-1)."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("sweep needs a non-empty list of prompt texts")
    batches, dev = [], model.device
    for start in range(0, len(prompts), batch_size):
        texts = list(prompts[start:start + batch_size])
        enc = model.encode(texts, padding_side="left")
        mask = enc["attention_mask"]
        if (mask.sum(-1) == 0).any():
            raise ValueError(f"prompt {start + int((mask.sum(-1) == 0).nonzero()[0])} has no "
                             "tokens: every prompt needs at least one")
        batches.append(Batch(enc["input_ids"].to(dev), mask.to(dev),
                              (mask.shape[1] - mask.sum(-1)).to(dev), start, start + len(texts)))
    return batches



def _sources(model, batches, variants, sources, last: bool, batch_size: int):
    """Validate `sources` against the patch edits; encode them like the prompts."""
    patches = any(e.mode == "patch" for v in variants for e in v)
    if sources is None:
        if patches:
            raise ValueError("patch edits need sources=[one source text per prompt]")
        return None
    if not patches:
        raise ValueError("sources given but no variant has a patch edit (mode='patch')")
    if isinstance(sources, str) or len(sources) != batches[-1].stop:
        raise ValueError(f"sources must be a list of one text per prompt ({batches[-1].stop}), "
                         f"got {1 if isinstance(sources, str) else len(sources)}")
    src = encode_batches(model, sources, batch_size)
    if not last:
        for b, sb in zip(batches, src):
            n, m = b.mask.sum(-1).tolist(), sb.mask.sum(-1).tolist()
            for i, (a, c) in enumerate(zip(n, m)):
                if a != c:
                    raise ValueError(f"prompt {b.start + i} has {a} tokens but its source has "
                                     f"{c}: patching position for position needs equal lengths "
                                     "(or positions='last')")
    return src


def _finish(store, bar, ids: list[int] | torch.Tensor, per_prompt: torch.Tensor) -> None:
    """A piece of variants is complete: store it (with `out`) and advance the bar."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if store is not None:
        store.add(ids, per_prompt[ids.to(per_prompt.device)])
    bar.update(len(ids))


def _keys(edits, mode: str) -> set:
    return {(e.layer, e.site) for v in edits for e in v if e.mode == mode}


def _run_loop(job: _Job, todo: list[int]) -> int:
    """The reference: per variant and prompt batch, one forward whose hooks index the edit."""
    model, metric, last = job.model, job.metric, job.last
    edits = [job.variants[i] for i in todo]
    states, means = clean_pass(model, job.batches, metric, first_layers=set(),
                               mean_keys=_keys(edits, "mean"), keep_kv=False,
                               sources=job.sources, patch_keys=_keys(edits, "patch"), last=last)
    for piece in range(0, len(todo), LOOP_PIECE):
        ids = todo[piece:piece + LOOP_PIECE]
        for i in ids:
            for st in states:
                b = st.batch
                T, seen = b.ids.shape[1], {}
                fill = {"mean": means, "patch": st.patch}
                hooks = []
                for e in job.variants[i]:
                    starts = padded_starts(b.pad, e.pos_start, T, last).tolist()
                    if e.mode == "steer":
                        hooks.append((f"L{e.layer}.resid_post",
                                      index_steer(job.steer, e.units[0], starts)))
                    else:
                        hooks.append((f"L{e.layer}.{e.site}", _index_edit(
                            e, starts, fill.get(e.mode, {}).get((e.layer, e.site)))))
                if metric.reads == "resid":
                    hooks.append(readout_hook(model, metric, seen))
                with model.hooks(hooks):
                    logits = model.forward(b.ids, b.mask).logits[:, -1].float()   # [P, vocab]
                r = (Readout(logits, st.readout.clean_logprobs, None)
                     if metric.reads == "logits" else Readout(None, None, seen["resid"]))
                job.per_prompt[i, b.start:b.stop] = metric(r)
        _finish(job.store, job.bar, ids, job.per_prompt)
    return 0


def _index_edit(e: Edit, starts: list[int], fill: torch.Tensor | None):
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
                act[b, s:, units] = fill[units].to(act.dtype)
        return act
    return fn


def _run_batched(job: _Job, todo: list[int]) -> int:
    """Plan chunks of the variants still to do; run each on every batch, halving on OOM."""
    model, batches, per_prompt, bar = job.model, job.batches, job.per_prompt, job.bar
    T_max = max(b.ids.shape[1] for b in batches)
    n_units = {"mlp_act": model.d_mlp, "attn_z": model.n_heads}
    if job.steer is not None:
        n_units["resid"] = len(job.steer)
    plan = plan_sweep([job.variants[i] for i in todo], n_layers=model.n_layers, n_units=n_units,
                      n_prompts=max(b.stop - b.start for b in batches),
                      bytes_per_row_per_layer=_row_layer_bytes(model, T_max),
                      memory_budget=job.memory_budget or default_memory_budget(model.device))
    todo_t = torch.tensor(todo, dtype=torch.long)
    keys = {m: {k for c in plan.chunks for k, x in c.modes.items() if x == m}
            for m in ("mean", "patch")}
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
                                 steer=job.steer)
            except torch.OutOfMemoryError:
                V_c = len(chunk.variant_ids)
                if V_c == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                splits += 1
                bar.write(f"sweep: out of memory with {V_c} variants x {b.stop - b.start} "
                          f"prompts; halving the chunk")
                run(_take(chunk, slice(0, V_c // 2)), j)
                run(_take(chunk, slice(V_c // 2, V_c)), j)
                return
            per_prompt[ids, b.start:b.stop] = vals.view(len(ids), -1)

    for chunk in plan.chunks:
        run(chunk, 0)
        _finish(job.store, bar, todo_t[chunk.variant_ids], per_prompt)
    return splits


def _take(chunk: Chunk, rows: slice) -> Chunk:
    """The chunk's variants `rows` as a chunk of their own."""
    return Chunk(chunk.variant_ids[rows], chunk.first_layer, chunk.pos_start, chunk.bytes,
                 {k: m[rows] for k, m in chunk.masks.items()}, dict(chunk.modes),
                 {k: p[rows] for k, p in chunk.pos_starts.items()})


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
