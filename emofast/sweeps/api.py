"""Sweeps: prompts x variants x metric, run one variant at a time or batched.

    from emofast.sweeps import Edit, LogitDiff, sweep
    variants = [[Edit(3, "attn_z", [h])] for h in range(model.n_heads)]        # one head each
    variants += [[Edit(5, "mlp_act", neurons, mode="mean")]]                    # a neuron set
    res = sweep(model, prompts, variants, LogitDiff([pos_id], [neg_id]), scope="last",
                out="runs/heads")                  # resumable; writes results.json
    res.values        # [n_variants] mean over prompts;  res.per_prompt [n_variants, n_prompts]

A variant is a list of `Edit`s, `Steer`s and other Interventions (none = the clean run). A
`Steer(layer, vector, alpha)` adds a steering vector to resid_post of the layer
(`emofast.sweeps.steer`; `steer_grid` builds an emotion x layer x alpha grid); any other
`Intervention` (a `Steering`, a circuit `Modulation`, one row or one per prompt) runs through its
own hooks. Edit units: mlp_act edits neurons, attn_z edits heads. Modes: "zero" sets the units
to 0; "mean" sets them to their mean activation over every real token of every prompt, read at
that (layer, site) in one clean pass (both engines share it); "patch" sets them to their
activation in a source run: `sources` gives one source text per prompt (e.g. an emotional
version of a neutral prompt), patched position for position, so each pair must have the same
token count, except with scope "last" (last token into last token).

Scope (`emofast.sites.Scope`; positions count each prompt's real tokens, prompts are
left-padded): "all" (each Edit's and Steer's own pos_start, 0 = every token), "last" (only each
prompt's last token) or "from:p" (real tokens >= p); with "last" or "from:p" the Edits must leave
pos_start at 0. Pad positions are never edited. Interventions keep their own scope.

Metrics (`emofast.sweeps.metrics`: KL, LogitDiff, LogProb, Projection, ProbeProb) read each
prompt's last real token, on the device, over all rows of a forward at once; the host reads
results once per stored piece (with `out`) or once at the end.

Engines. "loop" (`emofast.sweeps.loop`) is the reference: one hooked forward per variant and
prompt batch, edits by plain indexing. "batched" (`emofast.sweeps.batched`): the planner packs
variants into chunks that fit `memory_budget` and each chunk runs from the clean run's state;
variants holding other Interventions cannot be packed and run as the loop engine runs them (said
once). "chain" (`emofast.sweeps.chain`): the variants in the given order, each from the previous
one's state at the first layer where they differ (nested sets such as top-k curves; not scope
"last"). Prompts that begin with the same tokens share that prefix's forward in both
(`emofast.sweeps.shared`). All engines give the same numbers (tests/sweeps).

Output folder (`out`): finished pieces are stored as they complete, each checked by its sha256
when read back (`emofast.sweeps.store`); a sweep called again with the same out, model (weights,
dtype, device kind), prompts, variants, metric, scope, engine and batch size computes only what
is missing, a folder of another sweep refuses, a damaged part stops the sweep unless
`repair=True` recomputes exactly the damaged parts, and the end writes results.json and
results.safetensors (atomically). One run at a time writes into a folder (a lock); Ctrl-C says
how much is saved. Inside a torch.distributed program (torchrun) the ranks share the variants
and the folder (`emofast.sweeps.distributed`). A variant whose metric is not finite (inf/nan:
e.g. a steer far too strong) stops the sweep with an error naming it.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import Literal, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from ..interventions.base import Intervention
from ..models import Model
from ..report.lock import folder_lock
from ..sites import Scope, legacy_scope
from ..validation import Interrupted, positive_int
from .batched import run_batched
from .batches import encode_batches
from .chain import run_chain
from ..processes import barrier, world
from .distributed import run_across_ranks, stored
from .features import FeatureEdit, FeatureTable, lower_features
from .job import Job, check_finite
from .loop import run_loop
from .metrics import Metric
from .plan import Add, Edit, Variant
from .steer import AdditionTable, Steer, lower_steers
from .store import SweepStore, fingerprint, write_results

ENGINES = ("batched", "chain", "loop")


class SweepResult(NamedTuple):
    values: torch.Tensor        # [n_variants] fp32, the metric averaged over prompts
    per_prompt: torch.Tensor    # [n_variants, n_prompts] fp32, in the caller's orders
    engine: str                 # "batched", "chain" or "loop"
    elapsed_s: float            # wall time of this call, clean pass included
    resumed: int = 0            # variants read back from `out` instead of computed
    splits: int = 0             # chunks halved after running out of memory


@torch.inference_mode()
def sweep(model: Model, prompts: Sequence[str],
          variants: Sequence[Variant | Sequence[Edit | Steer | Intervention]], metric: Metric, *,
          engine: Literal["batched", "chain", "loop"] = "batched",
          scope: Scope | str | None = None,
          batch_size: int = 32, memory_budget: int | None = None,
          out: str | os.PathLike | None = None, sources: Sequence[str] | None = None,
          progress: bool = True, repair: bool = False, positions=None) -> SweepResult:
    """Run every variant on every prompt and measure `metric` (see the module docstring).

    prompts are texts as the model should see them (apply `model.chat_text` first if wanted);
    scope: "all" (default), "last" or "from:p"; batch_size prompts share one forward (batched:
    times the chunk's variants); memory_budget (bytes; default a quarter of free device memory)
    bounds a batched chunk by the planner's estimate; loop ignores it. out: a folder for
    resumable results (`repair`: recompute its damaged parts); sources: one source text per
    prompt, for "patch" edits. `positions=` is the deprecated old name of `scope` (an int p
    meant "from:p")."""
    t0 = time.perf_counter()
    scope = legacy_scope(positions, scope, where="sweep", int_means="from").require(
        "sweep", "all", "last", "from")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a Metric (KL(), LogitDiff(a, b), LogProb(t), "
                        f"Projection(v), ProbeProb(probe, cls)), got {metric!r}")
    head = model.hf.get_output_embeddings()
    metric.check(getattr(head, "out_features", None) or model.hf.config.vocab_size,
                 model.d_model, model.n_layers)
    if memory_budget is not None:
        memory_budget = positive_int(memory_budget, "memory_budget (bytes)")
    batches = encode_batches(model, prompts, batch_size)
    variants, table, features = _scoped(model, variants, scope, n_prompts=batches[-1].stop)
    _check_reach(variants, batches)
    src_batches = _sources(model, batches, variants, sources, scope.kind == "last", batch_size,
                           features)
    fp = None if out is None else fingerprint(
        model, prompts, variants, metric, scope, sources, table, engine=engine,
        batch_size=batch_size, features=features)
    if features is not None:
        features.fit_means(model, batches)
    job = Job(model, batches, src_batches, variants, table, metric, scope.kind == "last",
              torch.empty(len(variants), batches[-1].stop, device=model.device), None,
              None, memory_budget, features)
    w = world()
    if w is not None:
        if out is None:
            raise ValueError(f"a sweep across {w[1]} processes writes its chunks to out=DIR, "
                             "a folder every rank sees: give one")
        per_prompt, resumed, splits = run_across_ranks(
            job, out, fp, engine=engine, repair=repair, progress=progress, run=_run,
            n_layers=model.n_layers, w=w)
        check_finite(variants, torch.arange(len(variants)), per_prompt)
        result = SweepResult(per_prompt.mean(1), per_prompt, engine,
                             time.perf_counter() - t0, resumed, splits)
        if w[0] == 0:
            with folder_lock(out):
                write_results(out, result, variants, metric, scope, table, features)
        barrier("rank 0 writing results.json")
        return result
    with folder_lock(out) if out is not None else nullcontext():
        store = None if out is None else SweepStore(out, fp, repair=repair)
        job = job._replace(store=store)
        try:
            result = _compute(job, engine, progress,
                              {} if out is None else stored(out, fp, main=store))
        except KeyboardInterrupt:
            if store is None:
                raise
            raise Interrupted(f"sweep interrupted: {len(store.done)} of {len(variants)} variants "
                              f"are saved in {out}; run the same sweep again to resume") from None
        result = result._replace(elapsed_s=time.perf_counter() - t0)
        if out is not None:
            write_results(out, result, variants, metric, scope, table, features)
    return result


def _compute(job: Job, engine: str, progress: bool, done: dict) -> SweepResult:
    """The variants not in `done` (what the job's folder and its rank stores hold) computed,
    the stored ones read back (elapsed_s left 0)."""
    variants, per_prompt = job.variants, job.per_prompt
    for i, row in done.items():
        per_prompt[i] = row.to(per_prompt.device)
    todo = [i for i in range(len(variants)) if i not in done]
    splits = 0
    if todo:
        bar = tqdm(total=len(variants), initial=len(variants) - len(todo), unit="variant",
                   desc=f"sweep ({engine})", disable=not progress)
        splits = _run(job._replace(bar=bar), todo, engine)
        bar.close()
    per_prompt = per_prompt.float().cpu()  # the one host sync without `out`
    check_finite(variants, torch.arange(len(variants)), per_prompt)
    return SweepResult(per_prompt.mean(1), per_prompt, engine, 0.0, len(variants) - len(todo),
                       splits)


def _run(job: Job, todo: list[int], engine: str) -> int:
    """Hand `todo` to the engine; the batched one packs what the planner can pack."""
    if engine == "loop":
        return run_loop(job, todo)
    generic = [i for i in todo if any(isinstance(e, Intervention) for e in job.variants[i])]
    unpackable = set(generic)
    packed = [i for i in todo if i not in unpackable]
    if generic:
        job.bar.write(f"sweep: {len(generic)} variant(s) hold Interventions the planner cannot "
                      "pack; they run one forward per variant, as engine='loop' does")
    splits = (run_chain if engine == "chain" else run_batched)(job, packed) if packed else 0
    return splits + (run_loop(job, generic) if generic else 0)


def _scoped(model: Model, variants, scope: Scope, n_prompts: int
            ) -> tuple[list[tuple], AdditionTable | None, FeatureTable | None]:
    """Validate the variants, lower Steers and FeatureEdits to Adds (their tables beside) and
    apply the sweep's scope (from:p -> pos_start p)."""
    if isinstance(variants, (Edit, Variant, Steer, FeatureEdit, Intervention)) or not len(variants):
        raise ValueError("sweep needs a non-empty list of variants, each a list of Edits "
                         "(an empty list is the clean run)")
    lowered, features = lower_features(variants, model)
    lowered, table = lower_steers(lowered, model.d_model)
    limits = {"mlp_act": (model.d_mlp, "neurons"), "attn_z": (model.n_heads, "heads")}
    out = []
    for i, items in enumerate(lowered):
        for e in items:
            if isinstance(e, Intervention):
                _check_intervention(e, i, n_prompts)
                continue
            where = f"variant {i}, L{e.layer}.{e.site}"
            if not 0 <= e.layer < model.n_layers:
                raise ValueError(f"{where}: layer {e.layer} out of range: model has "
                                 f"{model.n_layers} layers (0..{model.n_layers - 1})")
            if isinstance(e, Edit):
                n, what = limits[e.site]
                bad = [u for u in e.units if not 0 <= u < n]
                if bad or not e.units:
                    raise ValueError(f"{where}: units {list(e.units)} must be a non-empty list in "
                                     f"0..{n - 1} ({n} {what})")
            if e.pos_start < 0:
                raise ValueError(f"{where}: pos_start {e.pos_start} must be >= 0")
            if scope.kind != "all" and e.pos_start != 0:
                raise ValueError(f"{where}: pos_start {e.pos_start} together with scope "
                                 f"{str(scope)!r}: set the scope per Edit or for the sweep, "
                                 "not both")
        _check_one_per_site(items, i)
        if scope.kind == "from" and scope.n > 0:
            items = tuple(_with_start(e, scope.n) for e in items)
        out.append(tuple(items))
    return out, table, features


def _check_intervention(iv: Intervention, i: int, n_prompts: int) -> None:
    if iv.n_rows() not in (1, n_prompts):
        raise ValueError(f"variant {i}: {type(iv).__name__} has {iv.n_rows()} rows; a sweep "
                         f"takes one row (every prompt) or one per prompt ({n_prompts})")
    if iv.scope.kind == "generated":
        raise ValueError(f"variant {i}: {type(iv).__name__} with scope 'generated' never acts "
                         "on a sweep's prompts; use scope 'all' or 'prompt'")


def _check_one_per_site(items: tuple, i: int) -> None:
    seen = {}
    for e in items:
        if isinstance(e, Intervention):
            continue
        if seen.setdefault((e.layer, e.site), (e.mode, e.pos_start)) != (e.mode, e.pos_start):
            raise ValueError(f"variant {i}, L{e.layer}.{e.site}: edited twice with different "
                             "mode/pos_start; one (layer, site) takes one mode and pos_start "
                             "per variant")


def _with_start(e, p: int):
    if isinstance(e, Edit):
        return Edit(e.layer, e.site, e.units, e.mode, p)
    if isinstance(e, Add):
        return Add(e.layer, e.entry, p, e.site)
    return e


def _check_reach(variants: list[tuple], batches) -> None:
    """Every pos_start must edit something: below the longest prompt's length."""
    longest = max(int(b.mask.sum(-1).max()) for b in batches)
    for i, items in enumerate(variants):
        for e in items:
            if not isinstance(e, Intervention) and e.pos_start >= longest:
                raise ValueError(f"variant {i}: pos_start {e.pos_start} edits nothing: the "
                                 f"longest prompt has {longest} tokens (real-token positions "
                                 f"0..{longest - 1})")


def _sources(model, batches, variants, sources, last: bool, batch_size: int,
             features: FeatureTable | None):
    """Validate `sources` against the patch edits; encode them like the prompts."""
    patches = any(getattr(e, "mode", None) == "patch" for v in variants for e in v) or bool(
        features is not None and features.keys("patch"))
    if sources is None:
        if patches:
            raise ValueError("patch edits need sources=[one source text per prompt]")
        return None
    if not patches:
        raise ValueError("sources given but no variant has a patch edit (mode='patch', or a "
                         "FeatureEdit with mode 'patch')")
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
                                     "(or scope='last')")
    return src
