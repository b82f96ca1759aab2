"""Emotion circuits (arXiv 2510.11328): sublayer importance, circuit assembly, circuit modulation.

    imp = sublayer_importance(model, importance_prompts(model, skels), emotion_metrics(model))
    imp.mlp[imp.emotions.index("anger")]     # [L] metric change when each MLP is zero-ablated
    diffs = unit_differences(model, skels)   # per-emotion mean activation differences per unit
    neurons, heads = unit_scores(model, dirs, diffs, "anger")
    circuit = assemble_circuit(neurons, heads, 64, 8, sublayers=(-imp.attn[0], -imp.mlp[0]),
                               n_sublayers=20)
    mod = Modulation.rows(diffs, {"anger": circuit}, [("anger", 4.0), (None, 0.0)])
    texts = steer.generate(model, prompts, steering=mod)   # per-row, like Steering.rows

Sublayer importance: per layer, metric(zero-ablate every head's attn_z) - metric(clean) and the
same for every mlp_act neuron, exact, through `sweep(engine="batched")` (a zeroed sublayer still
adds its output bias). The default metric (`emotion_metrics`) is read after instructed sev6
prompts ("Always reply in {emotion}") with the reply prefilled with "I feel": the logit of the
emotion's feeling words minus the other five emotions' (EMOTION_WORDS); shared=True is one
metric for all emotions (log-prob of any feeling word), a sixth of the sweeps. The expression
openers of emofast.data were not used: their first tokens ("This", "I") are shared by all
emotions.

Modulation: at each circuit unit, add alpha x (the emotion's group-centred mean activation minus
the mean over all emotions), measured like extract.sev_directions("expressed"): mean over the
prefilled reply opening after the uninstructed prompt. Units are ranked by how far that shift
moves the residual stream along the emotion direction at the unit's layer (`unit_scores`).
Modulation acts at every position of every forward; alpha = 0 leaves the model exactly unchanged.

`emofast.circuits_run.run_circuits` runs it all on one model and compares modulation with
residual steering and prompting on held-out sev6 prompts.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data import EMOTIONS6, VALENCES, Skeleton, sev_prompts
from .directions import EmotionDirections, subtract_group_means
from .discover import rank_neurons
from .extract import expressed_texts
from .kernels import steer_add
from .models import Model
from .planner import Edit
from .sites import Site, sites_for
from .sweep import LogitDiff, LogProb, Metric, sweep

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
                        metric: Metric | Mapping[str, Metric], *, positions: str | int = "all",
                        batch_size: int = 32, memory_budget: int | None = None,
                        progress: bool = True) -> SublayerImportance:
    """Zero-ablate each layer's whole attention (all heads' attn_z) and whole MLP (all
    mlp_act neurons), one at a time, with `sweep(engine="batched")`; see SublayerImportance.
    `metric` may map emotions to metrics; `prompts` then is one list for all or a mapping with
    the same keys (each emotion's own prompts)."""
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
        values.append(sweep(model, ps, variants, m, engine="batched", positions=positions,
                            batch_size=batch_size, memory_budget=memory_budget,
                            progress=progress and one).values)
    v = torch.stack(values)                                            # [E, 1 + 2L]
    attn, mlp = v[:, 1:L + 1] - v[:, :1], v[:, L + 1:] - v[:, :1]     # [E, L]
    if single:
        return SublayerImportance(attn[0], mlp[0], v[0, 0], None)
    return SublayerImportance(attn, mlp, v[:, 0], list(metrics))


# -- circuits -------------------------------------------------------------------------------
def _units(by_layer: Mapping, what: str) -> dict[int, Tensor]:
    out = {}
    for layer, units in by_layer.items():
        u = torch.as_tensor(units).reshape(-1)
        if u.is_floating_point() or u.dtype == torch.bool or (u.numel() and int(u.min()) < 0):
            raise ValueError(f"{what} at layer {layer}: unit indices must be integers >= 0, "
                             f"got {u.tolist()}")
        if u.numel():
            out[int(layer)] = u.long().unique()                       # sorted, deduplicated
    return dict(sorted(out.items()))


@dataclass
class Circuit:
    """The units of one circuit: {layer: LongTensor [k] sorted unit indices}."""
    neurons: dict[int, Tensor] = field(default_factory=dict)  # mlp_act neuron indices
    heads: dict[int, Tensor] = field(default_factory=dict)    # attention head indices

    def __post_init__(self):
        self.neurons, self.heads = _units(self.neurons, "neurons"), _units(self.heads, "heads")

    def __eq__(self, other) -> bool:  # the generated one would compare tensors elementwise
        return isinstance(other, Circuit) and self.to_json() == other.to_json()

    @property
    def n_neurons(self) -> int:
        return sum(len(u) for u in self.neurons.values())

    @property
    def n_heads(self) -> int:
        return sum(len(u) for u in self.heads.values())

    def check(self, n_layers: int, d_mlp: int, n_heads: int) -> None:
        """Raise ValueError if a layer or unit is out of range for the model's sizes."""
        for what, units, n in (("neuron", self.neurons, d_mlp), ("head", self.heads, n_heads)):
            for layer, u in units.items():
                if not 0 <= layer < n_layers:
                    raise ValueError(f"layer {layer} out of range: model has {n_layers} layers "
                                     f"(0..{n_layers - 1})")
                if int(u.max()) >= n:
                    raise ValueError(f"{what} {int(u.max())} at layer {layer} out of range: "
                                     f"{n} {what}s (0..{n - 1})")

    def to_json(self) -> dict:
        """{"neurons": {"3": [5, 9]}, "heads": {"7": [1]}}: plain JSON."""
        return {k: {str(layer): u.tolist() for layer, u in getattr(self, k).items()}
                for k in ("neurons", "heads")}

    @classmethod
    def from_json(cls, obj: Mapping) -> "Circuit":
        return cls({int(k): v for k, v in obj.get("neurons", {}).items()},
                   {int(k): v for k, v in obj.get("heads", {}).items()})


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


# -- unit differences and modulation --------------------------------------------------------
class UnitDifferences(NamedTuple):
    """Per emotion and unit: group-centred mean activation minus the mean over all emotions."""
    mlp: Tensor                 # [L, E, d_mlp] fp32
    attn: Tensor                # [L, E, H, d_head] fp32
    emotions: list[str]

    def index(self, emotion: str) -> int:
        if emotion not in self.emotions:
            raise ValueError(f"unknown emotion {emotion!r}: have {self.emotions}")
        return self.emotions.index(emotion)


def unit_differences(model: Model, skeletons: Sequence[Skeleton], *, batch_size: int = 32,
                     progress: bool = True) -> UnitDifferences:
    """mlp_act and attn_z at every layer, pooled over the prefilled reply opening after the
    uninstructed sev6 prompt (extract's "expressed" source), centred per scenario-event group."""
    prompts = sev_prompts(list(skeletons), instructed=False, prefill=True)
    texts, spans = expressed_texts(model, prompts)
    L = model.n_layers
    names = sites_for("mlp_act", range(L)) + sites_for("attn_z", range(L))
    acts = model.cache(texts, names, positions="span", spans=spans, templated=True,
                       batch_size=batch_size, progress=progress)      # one pass, both kinds
    labels, groups = [p.emotion for p in prompts], [p.group for p in prompts]

    def diff(stack: Tensor) -> Tensor:                                 # [L, N, W] -> [L, E, W]
        centred = subtract_group_means(stack.float(), groups)
        base = centred.mean(1)
        return torch.stack([centred[:, [i for i, y in enumerate(labels) if y == e]].mean(1) - base
                            for e in EMOTIONS6], dim=1)

    mlp = diff(torch.stack([acts[n] for n in names[:L]]))
    attn = diff(torch.stack([acts[n].flatten(1) for n in names[L:]]))
    return UnitDifferences(mlp, attn.unflatten(-1, (model.n_heads, model.d_head)), list(EMOTIONS6))


def unit_scores(model: Model, dirs: EmotionDirections, diffs: UnitDifferences,
                emotion: str) -> tuple[Tensor, Tensor]:
    """(neurons [L, d_mlp], heads [L, H]): how far modulating each unit with alpha = 1 moves
    the residual stream along the emotion's direction at its layer. Neurons: rank_neurons'
    contribution with the difference as activation (difference x W_down[j] . v); heads:
    difference [d_head] . (W_O[h] v)."""
    e, L = diffs.index(emotion), model.n_layers
    if sorted(dirs.layers) != list(range(L)):
        raise ValueError(f"unit_scores needs directions at every layer 0..{L - 1}, "
                         f"got {dirs.layers}")
    neurons = rank_neurons(model, dirs, emotion,
                           acts={layer: diffs.mlp[layer, e][None] for layer in range(L)})
    heads = torch.stack([torch.einsum("hd,hdm,m->h", diffs.attn[layer, e],
                                      model.adapter.W_O(layer).float().cpu(),
                                      dirs.get(emotion, layer)) for layer in range(L)])
    return neurons.contribution, heads


@dataclass
class Modulation:
    """Per-row circuit modulation: row i adds alpha[i] x the differences of emotion
    emotion_idx[i] (-1 = none) at that emotion's circuit units. Runs through steer.generate
    and metrics.lm_preservation like a Steering."""
    differences: UnitDifferences
    circuits: dict[str, Circuit]  # per emotion
    emotion_idx: Tensor           # [N] long
    alpha: Tensor                 # [N] fp32
    positions: str = "all"        # every position of every forward (the only mode)

    def __post_init__(self):
        if self.positions != "all":
            raise ValueError(f"modulation acts at every position (positions='all'), "
                             f"got {self.positions!r}")
        if self.alpha.shape != self.emotion_idx.shape or self.alpha.dim() != 1:
            raise ValueError("emotion_idx and alpha need one entry per row")
        L, _, d_mlp = self.differences.mlp.shape
        for e, c in self.circuits.items():
            self.differences.index(e)
            c.check(L, d_mlp, self.differences.attn.shape[2])

    @classmethod
    def rows(cls, differences: UnitDifferences, circuits: Circuit | Mapping[str, Circuit],
             rows: Sequence[tuple[str | None, float]]) -> "Modulation":
        """One row per (emotion or None, alpha); a single Circuit serves every emotion."""
        if isinstance(circuits, Circuit):
            circuits = {e: circuits for e in differences.emotions}
        emo = torch.full((len(rows),), -1, dtype=torch.long)
        alpha = torch.zeros(len(rows))
        for i, (emotion, a) in enumerate(rows):
            if emotion is None or a == 0:
                continue
            emo[i], alpha[i] = differences.index(emotion), float(a)
            if emotion not in circuits:
                raise ValueError(f"no circuit for emotion {emotion!r}: have {sorted(circuits)}")
        return cls(differences, dict(circuits), emo, alpha)

    @classmethod
    def single(cls, differences: UnitDifferences, circuits: Circuit | Mapping[str, Circuit],
               emotion: str, alpha: float) -> "Modulation":
        """The same modulation for every row (broadcast to any batch size)."""
        return cls.rows(differences, circuits, [(emotion, alpha)])

    def take(self, rows: slice | Tensor, n: int) -> "Modulation":
        """The modulation of `n` batch rows; a one-row Modulation broadcasts."""
        pick = torch.zeros(n, dtype=torch.long) if len(self.emotion_idx) == 1 \
            else torch.arange(len(self.emotion_idx))[rows]
        if len(pick) != n:
            raise ValueError(f"modulation has {len(self.emotion_idx)} rows, batch needs {n}")
        return replace(self, emotion_idx=self.emotion_idx[pick], alpha=self.alpha[pick])

    @contextmanager
    def hooks(self, model: Model) -> Iterator[None]:
        """Install this batch's hooks (rows = batch rows): one steer_add per touched site over
        [B, T, units], the vector zero outside each emotion's circuit."""
        d = self.differences
        want = (model.n_layers, len(d.emotions), model.d_mlp, model.n_heads, model.d_head)
        if (*d.mlp.shape, *d.attn.shape[2:]) != want:
            raise ValueError(f"the differences have shape mlp {tuple(d.mlp.shape)}, attn "
                             f"{tuple(d.attn.shape)}: computed on another model than {model!r}")
        E, dev = len(d.emotions), model.device
        tables: dict[Site, tuple[Tensor, Tensor]] = {}   # site -> (vectors [E, W], has [E])
        for e in sorted(set(self.emotion_idx[self.alpha != 0].tolist()) - {-1}):
            c = self.circuits[d.emotions[e]]
            for kind, by_layer, src in (("mlp_act", c.neurons, d.mlp), ("attn_z", c.heads, d.attn)):
                for layer, units in by_layer.items():
                    vec, has = tables.setdefault(Site(layer, kind), (
                        torch.zeros(E, src[layer, 0].numel()), torch.zeros(E, dtype=torch.bool)))
                    vec.view(E, *src.shape[2:])[e, units] = src[layer, e, units]
                    has[e] = True
        rows = self.emotion_idx.clamp(min=0)
        prepared = {site: (torch.where(has[rows] & (self.emotion_idx >= 0), self.emotion_idx,
                                       -1).to(dev), vec.to(dev))       # [B], [E, W]
                    for site, (vec, has) in tables.items()}
        alpha = self.alpha.to(dev)

        def hook(act, site):
            variant, vec = prepared[site]
            return steer_add(act.flatten(2), variant, vec, alpha).view_as(act)

        with model.hooks({str(site): hook for site in prepared}):
            yield
