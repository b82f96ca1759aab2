"""Emotion circuits (arXiv 2510.11328): sublayer importance and circuit assembly.

    imp = sublayer_importance(model, importance_prompts(model, skels), emotion_metrics(model))
    imp.mlp[imp.emotions.index("anger")]     # [L] metric change when each MLP is zero-ablated
    diffs = unit_differences(model, skels)   # per-emotion mean activation differences per unit
    neurons, heads = unit_scores(model, dirs, diffs, "anger")
    circuit = assemble_circuit(neurons, heads, 64, 8, sublayers=(-imp.attn[0], -imp.mlp[0]),
                               n_sublayers=20)
    mod = Modulation.rows(diffs, {"anger": circuit}, [("anger", 4.0), (None, 0.0)])
    texts = generate(model, prompts, intervention=mod)     # per-row, like Steering.rows

Sublayer importance: per layer, metric(zero-ablate every head's attn_z) - metric(clean) and the
same for every mlp_act neuron, exact, through `sweep(engine="batched")` (a zeroed sublayer still
adds its output bias). The default metric (`emotion_metrics`) is read after instructed sev6
prompts ("Always reply in {emotion}") with the reply prefilled with "I feel": the logit of the
emotion's feeling words minus the other five emotions' (EMOTION_WORDS); shared=True is one
metric for all emotions (log-prob of any feeling word), a sixth of the sweeps. The expression
openers of emofast.data were not used: their first tokens ("This", "I") are shared by all
emotions.

Modulation (`emofast.interventions.Modulation`): at each circuit unit, add alpha x the
emotion's per-unit difference (`emofast.analysis.units`). Units are ranked by how far
that shift moves the residual stream along the emotion direction at the unit's layer
(`unit_scores`).

`emofast.pipelines.circuits` runs it all on one model and compares modulation with residual
steering and prompting on held-out sev6 prompts.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..analysis.directions import EmotionDirections
from ..analysis.units import UnitDifferences
from ..data import EMOTIONS6, VALENCES, Skeleton, sev_prompts
from ..interventions.modulation import Circuit
from ..models import Model
from ..sites import Scope, legacy_scope
from ..sweeps import Edit, LogitDiff, LogProb, Metric, sweep
from .neurons import rank_neurons

# Feeling words whose first token is a whole word in SmolLM2's tokenizer (checked), per emotion.
EMOTION_WORDS = {
    "anger": ("angry", "furious", "mad", "annoyed"),
    "sadness": ("sad", "unhappy", "miserable", "depressed"),
    "happiness": ("happy", "delighted", "glad", "joyful"),
    "fear": ("scared", "afraid", "terrified", "frightened"),
    "surprise": ("surprised", "shocked", "amazed", "stunned"),
    "disgust": ("disgusted", "sick", "gross", "revolted"),
}
IMPORTANCE_PREFILL = "I feel"  # the next token is where a feeling word would go


# -- sublayer importance --------------------------------------------------------------------
class SublayerImportance(NamedTuple):
    """metric(sublayer zero-ablated) - metric(clean), mean over prompts; negative: the
    sublayer supports the metric. One metric: attn, mlp [L], clean []; a metric per emotion:
    attn, mlp [E, L], clean [E], rows named by `emotions` (None for one metric)."""
    attn: Tensor
    mlp: Tensor
    clean: Tensor
    emotions: list[str] | None


def emotion_metrics(model: Model, words: Mapping[str, Sequence[str]] = EMOTION_WORDS, *,
                    shared: bool = False) -> dict[str, Metric]:
    """Per emotion: LogitDiff(first tokens of its words, first tokens of every other
    emotion's words). A word's first non-blank token is used (" angry" -> "Ġangry").
    shared=True: one metric, {"feeling": LogProb(every emotion's tokens)}, how likely the model
    names any feeling (one sweep for all emotions: 1/E of the cost)."""
    tok = model.tokenizer
    ids = {}
    for emotion, ws in words.items():
        ids[emotion] = {}
        for w in ws:
            pieces = tok(" " + w, add_special_tokens=False)["input_ids"]
            first = next((t for t in pieces if tok.decode([t]).strip()), None)
            if first is None:
                raise ValueError(f"word {w!r} of {emotion!r} has no non-blank token")
            ids[emotion][first] = w
    for e, mine in ids.items():
        for other, theirs in ids.items():
            common = sorted(set(mine) & set(theirs)) if other != e else []
            if common:
                raise ValueError(f"{e!r} and {other!r} share first token(s) {common} "
                                 f"({[mine[t] for t in common]} vs {[theirs[t] for t in common]}): "
                                 "this tokenizer cannot tell them apart; pass other words")
    if shared:
        return {"feeling": LogProb(sorted(t for x in ids.values() for t in x))}
    return {e: LogitDiff(sorted(mine), sorted(t for o, x in ids.items() if o != e for t in x))
            for e, mine in ids.items()}


def importance_prompts(model: Model, skeletons: Sequence[Skeleton], *,
                       emotions: Sequence[str] = EMOTIONS6,
                       valences: Sequence[str] = VALENCES) -> dict[str, list[str]]:
    """Per emotion: chat texts of the instructed sev6 prompts, reply prefilled with "I feel"."""
    return {e: [model.chat_text(replace(p, prefill=IMPORTANCE_PREFILL))
                for p in sev_prompts(list(skeletons), emotions=(e,), valences=tuple(valences))]
            for e in emotions}


def sublayer_importance(model: Model, prompts: Sequence[str] | Mapping[str, Sequence[str]],
                        metric: Metric | Mapping[str, Metric], *,
                        scope: Scope | str | None = None, batch_size: int = 32,
                        memory_budget: int | None = None, progress: bool = True,
                        positions=None) -> SublayerImportance:
    """Zero-ablate each layer's whole attention (all heads' attn_z) and whole MLP (all
    mlp_act neurons), one at a time, with `sweep(engine="batched")`; see SublayerImportance.
    `metric` may map emotions to metrics; `prompts` then is one list for all or a mapping with
    the same keys (each emotion's own prompts). `positions=` is the deprecated old name of
    `scope`."""
    scope = legacy_scope(positions, scope, where="sublayer_importance", int_means="from")
    single = isinstance(metric, Metric)
    metrics = {"": metric} if single else dict(metric)
    if not metrics:
        raise ValueError("sublayer_importance needs a Metric or a non-empty {emotion: Metric}")
    if isinstance(prompts, Mapping):
        missing = sorted(set(metrics) - set(prompts))
        if single or missing:
            raise ValueError(f"per-emotion prompts need a metric per emotion with the same keys; "
                             f"no prompts for {missing or 'a single metric'}")
    L = model.n_layers
    variants = [[]] + [[Edit(layer, "attn_z", range(model.n_heads))] for layer in range(L)] \
        + [[Edit(layer, "mlp_act", range(model.d_mlp))] for layer in range(L)]
    values = []
    one = len(metrics) == 1  # progress: the sweep's own bar for one metric, else per metric
    for name, m in tqdm(metrics.items(), desc="sublayer importance", disable=not progress or one):
        ps = prompts[name] if isinstance(prompts, Mapping) else prompts
        values.append(sweep(model, ps, variants, m, engine="batched", scope=scope,
                            batch_size=batch_size, memory_budget=memory_budget,
                            progress=progress and one).values)
    v = torch.stack(values)                                            # [E, 1 + 2L]
    attn, mlp = v[:, 1:L + 1] - v[:, :1], v[:, L + 1:] - v[:, :1]     # [E, L]
    if single:
        return SublayerImportance(attn[0], mlp[0], v[0, 0], None)
    return SublayerImportance(attn, mlp, v[:, 0], list(metrics))



def assemble_circuit(neuron_scores: Tensor, head_scores: Tensor, budget_neurons: int,
                     budget_heads: int, *, sublayers: tuple[Tensor, Tensor] | None = None,
                     n_sublayers: int | None = None) -> Circuit:
    """The `budget_neurons` neurons and `budget_heads` heads with the largest scores.

    neuron_scores [L, d_mlp], head_scores [L, H]: larger = more wanted (e.g. `unit_scores`,
      or minus a head ablation sweep's effect). The budgets are maxima: fewer units are taken
      only when fewer are eligible.
    sublayers: (attn [L], mlp [L]) importance, larger = more important (e.g. minus
      SublayerImportance's effects); with `n_sublayers`, only units inside the n_sublayers most
      important sublayers (attention and MLP ranked together) are eligible."""
    for name, b in (("budget_neurons", budget_neurons), ("budget_heads", budget_heads)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"{name} must be an int >= 0, got {b!r}")
    if neuron_scores.dim() != 2 or head_scores.dim() != 2 or len(neuron_scores) != len(head_scores):
        raise ValueError(f"need neuron_scores [L, d_mlp] and head_scores [L, H] with the same L, got "
                         f"{tuple(neuron_scores.shape)} and {tuple(head_scores.shape)}")
    if neuron_scores.isnan().any() or head_scores.isnan().any():
        raise ValueError("scores contain NaN")
    L = len(neuron_scores)
    allowed_attn = allowed_mlp = torch.ones(L, dtype=torch.bool)
    if (sublayers is None) != (n_sublayers is None):
        raise ValueError("give sublayers and n_sublayers together (or neither)")
    if sublayers is not None:
        imp = torch.cat([torch.as_tensor(s).float().reshape(-1) for s in sublayers])  # [2L]
        if len(sublayers) != 2 or imp.numel() != 2 * L:
            raise ValueError(f"sublayers must be (attn [L], mlp [L]) with L = {L}")
        if not 1 <= n_sublayers <= 2 * L:
            raise ValueError(f"n_sublayers must be in 1..{2 * L} (2 sublayers x {L} layers), "
                             f"got {n_sublayers}")
        keep = torch.zeros(2 * L, dtype=torch.bool)
        keep[imp.topk(n_sublayers).indices] = True
        allowed_attn, allowed_mlp = keep[:L], keep[L:]
    return Circuit(_top(neuron_scores, allowed_mlp, budget_neurons),
                   _top(head_scores, allowed_attn, budget_heads))


def _top(scores: Tensor, allowed: Tensor, k: int) -> dict[int, list[int]]:
    """The k best eligible units as {layer: [unit]} (rows of `scores` = layers)."""
    s = scores.float().cpu().masked_fill(~allowed[:, None], float("-inf")).flatten()
    k = min(k, int(allowed.sum()) * scores.shape[1])
    out: dict[int, list[int]] = {}
    for i in s.topk(k).indices.tolist():
        out.setdefault(i // scores.shape[1], []).append(i % scores.shape[1])
    return out



def unit_scores(model: Model, dirs: EmotionDirections, diffs: UnitDifferences,
                emotion: str) -> tuple[Tensor, Tensor]:
    """(neurons [L, d_mlp], heads [L, H]): how far modulating each unit with alpha = 1 moves
    the residual stream along the emotion's direction at its layer. Neurons: rank_neurons'
    contribution with the difference as activation (difference x W_down[j] . v); heads:
    difference [d_head] . (W_O[h] v) (both with a post-norm's gain folded in: `rank_neurons`)."""
    e, L = diffs.index(emotion), model.n_layers
    if sorted(dirs.layers) != list(range(L)):
        raise ValueError(f"unit_scores needs directions at every layer 0..{L - 1}, "
                         f"got {dirs.layers}")
    neurons = rank_neurons(model, dirs, emotion,
                           acts={layer: diffs.mlp[layer, e][None] for layer in range(L)})
    heads = torch.stack([torch.einsum("hd,hdm,m->h", diffs.attn[layer, e],
                                      model.adapter.residual_W_O(layer).float().cpu(),
                                      dirs.get(emotion, layer)) for layer in range(L)])
    return neurons.contribution, heads


