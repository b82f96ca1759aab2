"""Discovery: cheap screens that say which neurons and heads to ablate first.

    from emofast.discover import rank_neurons, attribution_screen, verify_top
    ranking = rank_neurons(model, dirs, "joy", acts=model.cache(texts, ["L3.mlp_act"]))
    ranking.top(20)                       # [(layer, neuron, score)], largest score first
    attr = attribution_screen(model, prompts, LogitDiff([joy_id], [sad_id]), positions="last")
    attr.heads                            # [L, H] estimated metric change under zero ablation
    check = verify_top(model, prompts, attr, LogitDiff([joy_id], [sad_id]), k=32)
    check.spearman                        # rank agreement of estimate and exact sweep values

`rank_neurons` reads weights only (plus, optionally, cached activations): a neuron's
`projection` is how much one unit of its activation writes along the emotion direction,
W_down(L)[j] . v_L; its `contribution` is mean activation x projection (arXiv 2510.11328).

`attribution_screen` is attribution patching: one forward and one backward give, for every
head and neuron at once, the first-order estimate of what zero-ablating it would do to the
metric, sum over scoped positions of (0 - act) . d metric / d act. It is exact for a metric
linear in the unit and good while ablations are small; `verify_top` runs the exact zero
ablations of the top k units through `sweep` and reports how well the ranks agree.

Positions follow `emofast.sweep`: prompts are left-padded; "last" scopes each prompt's last
token only, "all" every real token (pads never count), an int p real tokens >= p.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .directions import EmotionDirections
from .models import Model
from .planner import Edit
from .runner import position_ids, readout_hook
from .sweep import KL, Metric, encode_batches, sweep
from .sweep_metrics import Readout

SITE_OF = {"heads": "attn_z", "neurons": "mlp_act"}


# -- neurons along an emotion direction -----------------------------------------------------
class NeuronRanking(NamedTuple):
    """Per-neuron scores at `layers` (row i of each tensor is model layer layers[i]).

    Sign: a positive score means the neuron pushes the residual stream towards +v (the
    emotion) -- for `projection` per unit of positive activation, for `contribution` on
    average over the given activations. Negative scores suppress the emotion."""
    layers: list[int]           # model layer of each row
    projection: Tensor          # [L, d_mlp] fp32, W_down(layer) @ v_layer
    contribution: Tensor | None  # [L, d_mlp] fp32, mean activation x projection; None w/o acts

    def top(self, k: int = 20, by: Literal["contribution", "projection"] | None = None,
            largest: bool = True) -> list[tuple[int, int, float]]:
        """The k (layer, neuron, score) with the largest scores (smallest if not `largest`),
        sorted best first. `by` defaults to "contribution" when activations were given,
        else "projection"."""
        by = by or ("projection" if self.contribution is None else "contribution")
        if by not in ("contribution", "projection"):
            raise ValueError(f"by must be 'contribution' or 'projection', got {by!r}")
        scores = getattr(self, by)
        if scores is None:
            raise ValueError("no contribution: pass acts= to rank_neurons, or use by='projection'")
        flat = scores.flatten()
        vals, idx = flat.topk(min(k, flat.numel()), largest=largest)
        d_mlp = scores.shape[1]
        return [(self.layers[i // d_mlp], i % d_mlp, v)
                for i, v in zip(idx.tolist(), vals.tolist())]


def rank_neurons(model: Model, directions: Mapping[int, Tensor] | EmotionDirections,
                 emotion: str | None = None, *,
                 acts: Mapping[int | str, Tensor] | None = None) -> NeuronRanking:
    """Score every MLP neuron of each direction's layer by how it writes along the direction.

    directions: {layer: v [d_model]} (used as given; unit vectors make scores comparable
      across layers), or an `EmotionDirections` with `emotion` (all of its layers).
    acts: cached mlp_act activations per layer, {layer: [N, d_mlp]} (keys may also be site
      names "L3.mlp_act", as `model.cache(texts, ["L3.mlp_act"])` returns); every layer of
      `directions` needs one. Their mean over N times the projection is the contribution."""
    if isinstance(directions, EmotionDirections):
        if emotion is None:
            raise ValueError("rank_neurons with EmotionDirections needs the emotion, e.g. 'joy'")
        directions = {layer: directions.get(emotion, layer) for layer in directions.layers}
    elif emotion is not None:
        raise ValueError("emotion is only used with EmotionDirections; a dict is one emotion")
    if not directions:
        raise ValueError("rank_neurons needs at least one layer's direction")
    layers = sorted(int(layer) for layer in directions)
    proj = []
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise ValueError(f"layer {layer} out of range: model has {model.n_layers} layers")
        v = torch.as_tensor(directions[layer]).float().reshape(-1)
        if v.numel() != model.d_model:
            raise ValueError(f"direction at layer {layer} has {v.numel()} entries, "
                             f"expected d_model={model.d_model}")
        W = model.adapter.W_down(layer).float()                       # [d_mlp, d_model]
        proj.append(W @ v.to(W.device))                               # [d_mlp]
    projection = torch.stack(proj).cpu()                              # [L, d_mlp]
    contribution = None
    if acts is not None:
        means = []
        for layer in layers:
            a = acts.get(layer, acts.get(f"L{layer}.mlp_act"))
            if a is None:
                raise ValueError(f"acts has no entry for layer {layer} (key {layer} or "
                                 f"'L{layer}.mlp_act')")
            a = torch.as_tensor(a)
            if a.dim() != 2 or a.shape[1] != model.d_mlp:
                raise ValueError(f"acts[{layer}] must be [N, d_mlp={model.d_mlp}], "
                                 f"got {tuple(a.shape)}")
            means.append(a.float().mean(0).cpu())                     # [d_mlp]
        contribution = torch.stack(means) * projection                # [L, d_mlp]
    return NeuronRanking(layers, projection, contribution)


# -- attribution patching -------------------------------------------------------------------
class Attribution(NamedTuple):
    """First-order estimates of metric(zero-ablated) - metric(clean), averaged over prompts.
    Positive: ablating the unit would raise the metric."""
    heads: Tensor | None        # [L, H] fp32, None unless "attn_z" was screened
    neurons: Tensor | None      # [L, d_mlp] fp32, None unless "mlp_act" was screened
    clean: float                # the clean metric, averaged over prompts
    positions: str | int        # the scope the estimate is for


def attribution_screen(model: Model, prompts: Sequence[str], metric: Metric, *,
                       sites: Sequence[str] = ("attn_z", "mlp_act"),
                       positions: Literal["all", "last"] | int = "all",
                       batch_size: int = 8) -> Attribution:
    """Estimate every head's and neuron's zero-ablation effect with one forward and backward
    per prompt batch (see the module docstring).

    KL(clean || edited) has zero gradient at the clean run, so its first-order estimate is 0
    for every unit: it raises ValueError; use LogitDiff or LogProb."""
    if isinstance(metric, KL):
        raise ValueError("KL(clean || edited) is 0 with zero gradient at the clean run, so its "
                         "first-order estimate is 0 for every unit; screen with LogitDiff(a, b) "
                         "or LogProb(t) instead (and verify KL with sweep)")
    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a Metric (LogitDiff(a, b), LogProb(t)), got {metric!r}")
    metric.check(model.hf.config.vocab_size, model.d_model, model.n_layers)
    sites = tuple(sites)
    if not sites or any(s not in SITE_OF.values() for s in sites):
        raise ValueError(f"sites must be a non-empty subset of ('attn_z', 'mlp_act'), got {sites}")
    if not (positions in ("all", "last") or isinstance(positions, int)
            and not isinstance(positions, bool) and positions >= 0):
        raise ValueError(f"positions must be 'all', 'last' or a real-token index p >= 0, "
                         f"got {positions!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    keys = [(layer, site) for site in sites for layer in range(model.n_layers)]
    totals = {site: 0.0 for site in sites}
    clean_sum = 0.0
    batches = encode_batches(model, prompts, batch_size)
    for b in batches:
        est, value = _attribute_batch(model, b, metric, keys, positions)
        clean_sum += value
        for site in sites:
            totals[site] = totals[site] + est[site]
    n = batches[-1].stop
    out = {site: (totals[site] / n).cpu() for site in sites}
    return Attribution(out.get("attn_z"), out.get("mlp_act"), clean_sum / n, positions)


def _attribute_batch(model: Model, b, metric: Metric, keys: list[tuple[int, str]], positions):
    """One batch: {site: [L, units] summed over the batch's prompts}, and the summed metric."""
    T = b.ids.shape[1]
    real = torch.arange(T, device=b.ids.device) - b.pad[:, None]      # [B, T] real-token index
    if positions == "last":
        scope = real == T - 1 - b.pad[:, None]                        # only T-1
    else:
        scope = real >= (0 if positions == "all" else positions)      # pads: real < 0
    scope = scope.float()
    acts, probes = {}, {}

    def probe(act, site):
        # act + a zero leaf: its gradient is d metric / d act along every downstream path.
        zero = torch.zeros_like(act, requires_grad=True)
        acts[site], probes[site] = act.detach(), zero
        return act + zero

    seen = {}
    hooks = [(f"L{layer}.{site}", probe) for layer, site in keys]
    if metric.reads == "resid":
        hooks.append(readout_hook(model, metric, seen))
    with torch.enable_grad(), model.hooks(hooks):
        hidden = model.hf.base_model(input_ids=b.ids, attention_mask=b.mask,
                                     position_ids=position_ids(b.mask),
                                     use_cache=False).last_hidden_state
        if metric.reads == "logits":
            logits = model.hf.get_output_embeddings()(hidden[:, -1]).float()  # [B, vocab]
            values = metric(Readout(logits, logits.detach().log_softmax(-1), None))  # [B]
        else:
            values = metric(Readout(None, None, seen["resid"]))
        leaves = [probes[s] for s in sorted(probes)]
        grads = dict(zip(sorted(probes), torch.autograd.grad(values.sum(), leaves,
                                                             allow_unused=True)))
    est = {}
    for site in sorted(probes):
        g = grads[site]
        if g is None:   # the unit cannot reach the metric (never in these models)
            g = torch.zeros_like(acts[site])
        effect = -(acts[site].float() * g.float())                    # [B, T, d_mlp | H, d_head]
        if site.kind == "attn_z":
            effect = effect.sum(-1)                                   # [B, T, H]
        est[site] = torch.einsum("bt,btu->u", scope, effect)          # [units]
    by_site = {kind: torch.stack([est[s] for s in sorted(est) if s.kind == kind])
               for kind in {s.kind for s in est}}                     # [L, units], layer order
    return by_site, float(values.detach().sum())


# -- exact check of the top units -----------------------------------------------------------
class Verification(NamedTuple):
    """The top-k units by |estimate| (largest first) and their exact zero-ablation effects."""
    units: list[tuple[int, int]]  # (layer, head or neuron)
    estimate: Tensor            # [k] fp32, from the Attribution
    exact: Tensor               # [k] fp32, sweep(zero ablation) - sweep(clean), mean over prompts
    spearman: float             # rank correlation of estimate and exact (nan if k < 2 or constant)


def verify_top(model: Model, prompts: Sequence[str], attribution: Attribution, metric: Metric,
               *, k: int = 32, kind: Literal["heads", "neurons"] = "heads",
               positions: Literal["all", "last"] | int | None = None, batch_size: int = 32,
               progress: bool = False) -> Verification:
    """Zero-ablate the k units with the largest |estimate| one at a time with
    `sweep(engine="batched")` on the same prompts; positions default to the attribution's."""
    if kind not in SITE_OF:
        raise ValueError(f"kind must be 'heads' or 'neurons', got {kind!r}")
    scores = attribution.heads if kind == "heads" else attribution.neurons
    if scores is None:
        raise ValueError(f"the attribution has no {kind}: screen with sites including "
                         f"{SITE_OF[kind]!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = scores.flatten()
    _, idx = flat.abs().topk(min(k, flat.numel()))
    n_units = scores.shape[1]
    units = [(i // n_units, i % n_units) for i in idx.tolist()]
    variants = [[]] + [[Edit(layer, SITE_OF[kind], [u])] for layer, u in units]
    res = sweep(model, prompts, variants, metric, engine="batched",
                positions=attribution.positions if positions is None else positions,
                batch_size=batch_size, progress=progress)
    estimate, exact = flat[idx].float(), res.values[1:] - res.values[0]
    return Verification(units, estimate, exact, spearman(estimate, exact))


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two [n] tensors; ties get their average rank."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() != y.numel():
        raise ValueError(f"spearman needs equal lengths, got {x.numel()} and {y.numel()}")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return float("nan") if denom == 0 else float((rx @ ry).item() / denom)


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks [n]; tied values share the mean of their ranks."""
    less = (x[None, :] < x[:, None]).sum(1)                           # [n] values below x_i
    equal = (x[None, :] == x[:, None]).sum(1)                         # [n] ties, x_i included
    return less.double() + (equal.double() + 1) / 2
