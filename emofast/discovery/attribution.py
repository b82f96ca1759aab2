"""Attribution patching: a cheap screen that says which heads and neurons to ablate first.

    attr = attribution_screen(model, prompts, LogitDiff([joy_id], [sad_id]), scope="last")
    attr.heads                            # [L, H] estimated metric change under zero ablation
    check = verify_top(model, prompts, attr, LogitDiff([joy_id], [sad_id]), k=32)
    check.spearman                        # rank agreement of estimate and exact sweep values

`attribution_screen` is attribution patching: one forward and one backward give, for every
head and neuron at once, the first-order estimate of what zero-ablating it would do to the
metric, sum over scoped positions of (0 - act) . d metric / d act. It is exact for a metric
linear in the unit and good while ablations are small; `verify_top` runs the exact zero
ablations of the top k units through `sweep` and reports how well the ranks agree.

The scope follows `emofast.sweeps`: prompts are left-padded; "last" is each prompt's last token
only, "all" every real token (pads never count), "from:p" real tokens >= p.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..models import Model
from ..sites import Scope, deprecated, legacy_scope
from ..sweeps import KL, Edit, Metric, Readout, encode_batches, sweep
from ..sweeps.clean import readout_hook

SITE_OF = {"heads": "attn_z", "neurons": "mlp_act"}


class Attribution(NamedTuple):
    """First-order estimates of metric(zero-ablated) - metric(clean), averaged over prompts.
    Positive: ablating the unit would raise the metric."""
    heads: Tensor | None        # [L, H] fp32, None unless "attn_z" was screened
    neurons: Tensor | None      # [L, d_mlp] fp32, None unless "mlp_act" was screened
    clean: float                # the clean metric, averaged over prompts
    scope: Scope                # where the ablations it estimates apply

    @property
    def positions(self):
        """Deprecated: the scope in the old spelling ("all", "last" or p); use `scope`."""
        deprecated("Attribution.positions is deprecated: use Attribution.scope")
        return self.scope.n if self.scope.kind == "from" else str(self.scope)


def attribution_screen(model: Model, prompts: Sequence[str], metric: Metric, *,
                       sites: Sequence[str] = ("attn_z", "mlp_act"),
                       scope: Scope | str | None = None, batch_size: int = 8,
                       positions=None) -> Attribution:
    """Estimate every head's and neuron's zero-ablation effect with one forward and backward
    per prompt batch (see the module docstring); scope "all" (default), "last" or "from:p"
    (`positions=` is its deprecated old name).

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
    scope = legacy_scope(positions, scope, where="attribution_screen", int_means="from").require(
        "attribution_screen", "all", "last", "from")
    keys = [(layer, site) for site in sites for layer in range(model.n_layers)]
    totals = {site: 0.0 for site in sites}
    clean_sum = 0.0
    batches = encode_batches(model, prompts, batch_size)
    for b in batches:
        est, value = _attribute_batch(model, b, metric, keys, scope)
        clean_sum += value
        for site in sites:
            totals[site] = totals[site] + est[site]
    n = batches[-1].stop
    out = {site: (totals[site] / n).cpu() for site in sites}
    return Attribution(out.get("attn_z"), out.get("mlp_act"), clean_sum / n, scope)


def _attribute_batch(model: Model, b, metric: Metric, keys: list[tuple[int, str]], scope: Scope):
    """One batch: {site: [L, units] summed over the batch's prompts}, and the summed metric."""
    T = b.ids.shape[1]
    real = torch.arange(T, device=b.ids.device) - b.pad[:, None]      # [B, T] real-token index
    if scope.kind == "last":
        in_scope = real == T - 1 - b.pad[:, None]                     # only T-1
    else:
        in_scope = real >= (scope.n if scope.kind == "from" else 0)   # pads: real < 0
    in_scope = in_scope.float()
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
        hidden = model.forward(b.ids, b.mask, base=True).last_hidden_state
        if metric.reads == "logits":
            logits = model.unembed(hidden[:, -1])  # [B, vocab]
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
        est[site] = torch.einsum("bt,btu->u", in_scope, effect)       # [units]
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
               scope: Scope | str | None = None, batch_size: int = 32,
               progress: bool = False, positions=None) -> Verification:
    """Zero-ablate the k units with the largest |estimate| one at a time with
    `sweep(engine="batched")` on the same prompts; the scope defaults to the attribution's."""
    if scope is None and positions is None:
        scope = attribution.scope
    scope = legacy_scope(positions, scope, where="verify_top", int_means="from")
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
    res = sweep(model, prompts, variants, metric, engine="batched", scope=scope,
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
