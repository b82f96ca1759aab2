"""Ablation sweeps: prompts x variants x metric, run one variant at a time or batched.

    from emofast.planner import Edit
    variants = [[Edit(3, "attn_z", [h])] for h in range(model.n_heads)]        # one head each
    variants += [[Edit(5, "mlp_act", neurons, mode="mean")]]                    # a neuron set
    res = sweep(model, prompts, variants, LogitDiff([pos_id], [neg_id]), positions="last")
    res.values        # [n_variants] mean over prompts;  res.per_prompt [n_variants, n_prompts]

A variant is a list of `Edit`s (none = the clean run). Units: mlp_act edits neurons, attn_z edits
heads. Modes: "zero" sets the units to 0; "mean" sets them to their mean activation over every
real token of every prompt, read at that (layer, site) in one clean pass (both engines share it).

Positions. Every prompt batch is LEFT-padded, so each row's last real token sits at T-1, and
position ids come from the attention mask (padding does not change the model's output). An
edit's scope counts real tokens of each prompt: `Edit.pos_start = p` edits real tokens >= p (in
row b: padded positions >= pad_b + p; a prompt with <= p tokens is not edited). `positions`
sets one scope for the whole sweep: "all" (each Edit's own pos_start, 0 = every token), "last"
(only each prompt's last token) or an int p (real tokens >= p); with "last" or an int, the Edits
must leave pos_start at 0. Pad positions are never edited.

Metrics read the next-token logits at the last real token of each prompt: `KL()` = KL(clean ||
edited), `LogitDiff(a, b)` = mean logit over token set a minus mean over b, `LogProb(t)` = log
of the probability mass on tokens t. They run on the device over all rows of a forward at once;
the host reads results once, at the end.

Engines. "loop" is the reference: one hooked forward per variant and prompt batch, edits done by
plain indexing. "batched": the planner (`emofast.planner.plan_sweep`) packs variants into chunks
that fit `memory_budget`; a chunk's variants are folded into the batch (row r = variant r // P,
prompt r % P), and one hook per (layer, site) applies every row's own edit with `masked_ablate`.
Only the last position goes through the unembedding. Both engines give the same numbers
(tests/test_sweep.py).
The chunks' shared clean prefix (first_layer, pos_start) is not reused yet: each chunk runs the
full forward.
"""
from __future__ import annotations

import abc
import time
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .kernels import masked_ablate
from .models import Model
from .planner import Edit, Variant, plan_sweep

ENGINES = ("batched", "loop")
SWEEP_SITES = ("mlp_act", "attn_z")
SWEEP_MODES = ("zero", "mean")
DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes


# -- metrics --------------------------------------------------------------------------------
class Metric(abc.ABC):
    """One number per row from the edited next-token logits at each prompt's last real token:
    `metric(logits [B, vocab] fp32, clean_logprobs [B, vocab] fp32) -> [B]`."""

    def check(self, vocab_size: int) -> None:
        """Raise ValueError if the metric cannot be computed over `vocab_size` logits."""

    @abc.abstractmethod
    def __call__(self, logits: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
        """[B] metric values."""


def _token_ids(tokens, what: str) -> torch.Tensor:
    ids = torch.as_tensor([tokens] if isinstance(tokens, int) else tokens).reshape(-1)
    if ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{what}: give one or more integer token ids, got {tokens!r}")
    if len(set(ids.tolist())) != ids.numel():
        raise ValueError(f"{what}: duplicate token ids in {ids.tolist()}; give each token once")
    return ids.long()


def _check_vocab(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    bad = [t for t in ids.tolist() if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what}: token id(s) {bad} out of range: the model's vocabulary has "
                         f"{vocab_size} tokens (0..{vocab_size - 1})")


class KL(Metric):
    """KL(clean || edited) of the next-token distribution, nats (0 for the clean run)."""

    def __call__(self, logits, clean_logprobs):
        return F.kl_div(logits.log_softmax(-1), clean_logprobs, log_target=True,
                        reduction="none").sum(-1)

    def __repr__(self):
        return "KL()"


class LogitDiff(Metric):
    """Mean logit of `tokens_a` minus mean logit of `tokens_b`."""

    def __init__(self, tokens_a: Sequence[int] | int, tokens_b: Sequence[int] | int):
        self.tokens_a = _token_ids(tokens_a, "LogitDiff tokens_a")
        self.tokens_b = _token_ids(tokens_b, "LogitDiff tokens_b")

    def check(self, vocab_size):
        _check_vocab(self.tokens_a, vocab_size, "LogitDiff tokens_a")
        _check_vocab(self.tokens_b, vocab_size, "LogitDiff tokens_b")

    def __call__(self, logits, clean_logprobs):
        a, b = self.tokens_a.to(logits.device), self.tokens_b.to(logits.device)
        return logits[:, a].mean(-1) - logits[:, b].mean(-1)

    def __repr__(self):
        return f"LogitDiff({self.tokens_a.tolist()}, {self.tokens_b.tolist()})"


class LogProb(Metric):
    """log P(next token in `tokens`) = logsumexp of the tokens' log-probabilities."""

    def __init__(self, tokens: Sequence[int] | int):
        self.tokens = _token_ids(tokens, "LogProb tokens")

    def check(self, vocab_size):
        _check_vocab(self.tokens, vocab_size, "LogProb tokens")

    def __call__(self, logits, clean_logprobs):
        return logits.log_softmax(-1)[:, self.tokens.to(logits.device)].logsumexp(-1)

    def __repr__(self):
        return f"LogProb({self.tokens.tolist()})"


# -- the sweep ------------------------------------------------------------------------------
class SweepResult(NamedTuple):
    values: torch.Tensor        # [n_variants] fp32, the metric averaged over prompts
    per_prompt: torch.Tensor    # [n_variants, n_prompts] fp32, in the caller's orders
    engine: str                 # "batched" or "loop"
    elapsed_s: float            # wall time of the whole call, clean pass included


class _Batch(NamedTuple):
    """One left-padded prompt batch: prompts start..stop-1 of the sweep."""
    ids: torch.Tensor           # [P_b, T] on the model's device
    mask: torch.Tensor          # [P_b, T]
    pad: torch.Tensor           # [P_b] pad tokens in front of each row
    start: int
    stop: int


@torch.inference_mode()
def sweep(model: Model, prompts: Sequence[str], variants: Sequence[Variant | Sequence[Edit]],
          metric: Metric, *, engine: Literal["batched", "loop"] = "batched",
          positions: Literal["all", "last"] | int = "all", batch_size: int = 32,
          memory_budget: int | None = None, progress: bool = True) -> SweepResult:
    """Run every variant on every prompt and measure `metric` (see the module docstring).

    prompts are texts as the model should see them (apply `model.chat_text` first if wanted);
    batch_size prompts share one forward (batched: times the chunk's variants); memory_budget
    (bytes, default 2 GiB) bounds a batched chunk by the planner's estimate; loop ignores it."""
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a Metric (KL(), LogitDiff(a, b), LogProb(t)), "
                        f"got {metric!r}")
    head = model.hf.get_output_embeddings()
    metric.check(getattr(head, "out_features", None) or model.hf.config.vocab_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget}")
    variants = _scoped(model, variants, positions)
    batches = _encode(model, prompts, batch_size)
    longest = max(int(b.mask.sum(-1).max()) for b in batches)
    for i, edits in enumerate(variants):
        for e in edits:
            if e.pos_start >= longest:
                raise ValueError(f"variant {i}: pos_start {e.pos_start} edits nothing: the "
                                 f"longest prompt has {longest} tokens (real-token positions "
                                 f"0..{longest - 1})")
    mean_keys = {(e.layer, e.site) for edits in variants for e in edits if e.mode == "mean"}
    clean_logprobs, means = _clean_pass(model, batches, mean_keys)
    last = positions == "last"
    if engine == "loop":
        per_prompt = _run_loop(model, batches, variants, metric, clean_logprobs, means, last,
                               progress)
    else:
        per_prompt = _run_batched(model, batches, variants, metric, clean_logprobs, means, last,
                                  memory_budget or DEFAULT_MEMORY_BUDGET, progress)
    per_prompt = per_prompt.float().cpu()  # the one host sync
    return SweepResult(per_prompt.mean(1), per_prompt, engine, time.perf_counter() - t0)


def _scoped(model: Model, variants, positions) -> list[tuple[Edit, ...]]:
    """Validate the variants and apply the sweep-wide `positions` (an int p -> pos_start p)."""
    if isinstance(variants, (Edit, Variant)) or not len(variants):
        raise ValueError("sweep needs a non-empty list of variants, each a list of Edits "
                         "(an empty list is the clean run)")
    if not (positions in ("all", "last") or isinstance(positions, int)
            and not isinstance(positions, bool) and positions >= 0):
        raise ValueError(f"positions must be 'all', 'last' or a real-token index p >= 0 "
                         f"(edit tokens >= p), got {positions!r}")
    n_units = {"mlp_act": model.d_mlp, "attn_z": model.n_heads}
    out = []
    for i, v in enumerate(variants):
        if isinstance(v, Edit):
            raise TypeError(f"variant {i} is an Edit: a variant is a list of Edits, e.g. [edit]")
        edits = v.edits if isinstance(v, Variant) else Variant(v).edits
        seen = {}
        for e in edits:
            where = f"variant {i}, L{e.layer}.{e.site}"
            if e.site not in SWEEP_SITES or e.mode not in SWEEP_MODES:
                raise ValueError(f"{where}: sweep runs {'/'.join(SWEEP_MODES)} ablations of "
                                 f"{' or '.join(SWEEP_SITES)}, got site {e.site!r}, "
                                 f"mode {e.mode!r}")
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
    return out


def _encode(model: Model, prompts: Sequence[str], batch_size: int) -> list[_Batch]:
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("sweep needs a non-empty list of prompt texts")
    batches, dev = [], model.device
    for start in range(0, len(prompts), batch_size):
        texts = list(prompts[start:start + batch_size])
        enc = model.encode(texts, padding_side="left")  # every row's last real token at T-1
        mask = enc["attention_mask"]
        if (mask.sum(-1) == 0).any():
            raise ValueError(f"prompt {start + int((mask.sum(-1) == 0).nonzero()[0])} has no "
                             "tokens: every prompt needs at least one")
        batches.append(_Batch(enc["input_ids"].to(dev), mask.to(dev),
                              (mask.shape[1] - mask.sum(-1)).to(dev), start, start + len(texts)))
    return batches


def _clean_pass(model: Model, batches: list[_Batch], mean_keys: set):
    """Clean next-token log-probs [n_prompts, vocab] at the last token, and per (layer, site)
    in `mean_keys` the mean activation over all real tokens of all prompts: mlp_act [d_mlp],
    attn_z [H, d_head]."""
    sums, count, logprobs = {k: 0.0 for k in mean_keys}, 0, []
    for b in batches:
        real = b.mask.bool()                                           # [P_b, T]

        def read(act, site):
            sums[(site.layer, site.kind)] += act[real].double().sum(0)  # [*act]

        with model.hooks([(f"L{layer}.{site}", read) for layer, site in mean_keys]):
            logits = model.forward(b.ids, b.mask).logits[:, -1]       # [P_b, vocab]
        logprobs.append(logits.float().log_softmax(-1))
        count += int(real.sum())
    return torch.cat(logprobs), {k: (s / count).float() for k, s in sums.items()}


def _row_starts(pad: torch.Tensor, T: int, pos_start, last: bool) -> torch.Tensor:
    """Real-token pos_start (int or [B]) -> padded start per row [B]; "last" -> T-1."""
    if last:
        return torch.full_like(pad, T - 1)
    return (pad + pos_start).clamp(max=T)  # T: the prompt is too short, nothing to edit


def _run_loop(model, batches, variants, metric, clean_logprobs, means, last, progress):
    """The reference: per variant and prompt batch, one forward whose hooks index the edit."""
    per_prompt = torch.empty(len(variants), batches[-1].stop, device=model.device)
    for i, edits in enumerate(tqdm(variants, desc="sweep (loop)", unit="variant",
                                   disable=not progress)):
        for b in batches:
            T = b.ids.shape[1]
            hooks = [(f"L{e.layer}.{e.site}",
                      _index_edit(e, _row_starts(b.pad, T, e.pos_start, last).tolist(),
                                  means.get((e.layer, e.site)) if e.mode == "mean" else None))
                     for e in edits]
            with model.hooks(hooks):
                logits = model.forward(b.ids, b.mask).logits[:, -1]   # [P_b, vocab]
            per_prompt[i, b.start:b.stop] = metric(logits.float(),
                                                   clean_logprobs[b.start:b.stop])
    return per_prompt


def _index_edit(e: Edit, starts: list[int], fill: torch.Tensor | None):
    """Hook: act [B, T, d_mlp] or [B, T, H, d_head]; row b, positions >= starts[b], the units
    (dim 2: neurons or heads) := 0 or their mean."""
    units = list(e.units)

    def fn(act, site):
        act = act.clone()
        for b, s in enumerate(starts):
            act[b, s:, units] = 0.0 if fill is None else fill[units].to(act.dtype)
        return act
    return fn


def _run_batched(model, batches, variants, metric, clean_logprobs, means, last, memory_budget,
                 progress):
    """Plan chunks, then per chunk and prompt batch one forward of V_c * P_b rows."""
    dev, T_max = model.device, max(b.ids.shape[1] for b in batches)
    plan = plan_sweep(variants, n_layers=model.n_layers,
                      n_units={"mlp_act": model.d_mlp, "attn_z": model.n_heads},
                      n_prompts=max(b.stop - b.start for b in batches),
                      bytes_per_row_per_layer=_row_layer_bytes(model, T_max),
                      memory_budget=memory_budget)
    fills = {k: m.flatten().to(dev) for k, m in means.items()}        # [W]
    per_prompt = torch.empty(len(variants), batches[-1].stop, device=dev)
    bar = tqdm(total=len(plan.chunks) * len(batches), desc="sweep (batched)", unit="chunk",
               disable=not progress)
    for chunk in plan.chunks:
        V_c = len(chunk.variant_ids)
        rows_of = chunk.variant_ids.to(dev)                            # [V_c]
        for b in batches:
            P_b, T = b.stop - b.start, b.ids.shape[1]
            row_variant = torch.arange(V_c, device=dev).repeat_interleave(P_b)  # [V_c * P_b]
            hooks = []
            for key, mask in chunk.masks.items():
                layer, site = key
                pos = _row_starts(b.pad.repeat(V_c), T,
                                  chunk.pos_starts[key].to(dev).repeat_interleave(P_b), last)
                mode = chunk.modes[key]
                hooks.append((f"L{layer}.{site}", _masked_edit(
                    row_variant, mask.to(dev), mode, fills[key] if mode == "mean" else None,
                    model.d_head if site == "attn_z" else 1, pos)))
            with model.hooks(hooks):
                logits = _last_logits(model, b.ids.repeat(V_c, 1), b.mask.repeat(V_c, 1))
            vals = metric(logits.float(), clean_logprobs[b.start:b.stop].repeat(V_c, 1))
            per_prompt[rows_of, b.start:b.stop] = vals.view(V_c, P_b)
            bar.update(1)
    bar.close()
    return per_prompt


def _masked_edit(row_variant, mask, mode, fill, group, pos_start):
    """Hook: every row's own edit in one masked_ablate call (attn_z flattened to H * d_head)."""
    def fn(act, site):
        x = act.flatten(2)                                             # [B, T, W]
        return masked_ablate(x, row_variant, mask, mode=mode, fill=fill, group=group,
                             pos_start=pos_start).view_as(act)
    return fn


def _last_logits(model: Model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, vocab] at position T-1 only: the base model, then the unembedding."""
    hidden = model.forward(ids, mask, base=True).last_hidden_state    # [B, T, d_model]
    return model.hf.get_output_embeddings()(hidden[:, -1])


def _row_layer_bytes(model: Model, T: int) -> int:
    """Planner estimate per batch row per layer run: T tokens x d_model x 4 live tensors
    (residual, K, V, one working tensor) x element size. Rough: lower memory_budget if a chunk
    runs out of memory."""
    return T * model.d_model * 4 * next(model.hf.parameters()).element_size()
