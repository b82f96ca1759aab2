"""Phase-stratified causal tracing of SAE features (after arXiv 2604.25866).

    attr = feature_attribution(model, saes, prompts, LogitDiff(a, b))   # every feature, one backward
    trace = trace_features(model, saes, examples, phases={"late": ["L24.resid_post", ...]})
    trace.per_emotion["disgust"].phases["late"].k80     # features reaching 80% of the phase's effect

`feature_attribution` screens every feature of every SAE with one forward and one backward per
prompt batch of the unedited model (a zero probe at each SAE's site reads the metric's gradient
g there; the SAE with its error term would leave the forward unchanged), which gives each
feature's
gradient x activation, sum over real tokens of a_f (W_dec[f] . J g) (J: the SAE's output
normalisation), and its zero-ablation estimate, the negative of that. It also counts how often each
feature fires on the prompts (matched random controls need it) and on their first real token.

`trace_features` does it per emotion on recognition prompts (the true label's first answer tokens
against the other labels', `LogitDiff`), keeps each site's `n_candidates` features of largest
|estimate|, measures their zero ablations exactly with the batched sweep engine (`FeatureEdit`),
reports the rank agreement (Spearman) of estimate and exact effect, and per phase (a set of
sites) over its supporting candidates (those whose zeroing alone lowers the metric; the others
are counted as opposing) the effect of zeroing them all at once and the top-k ablation curve
(most negative single effect first, k = 1, 2, 4, ...); `k80` is the smallest k whose curve
reaches 80% of the all-supporting effect (None when that effect does not lower the metric).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..data import EMOTIONS6, Example
from ..eval.recognition import label_tokens, recognition_prompt
from ..models import Model
from ..sae import SAE
from ..sites import parse_site
from ..sweeps import FeatureEdit, LogitDiff, Metric, Readout, encode_batches, sweep
from .attribution import spearman

CURVE_FRACTION = 0.8


class FeatureAttribution(NamedTuple):
    """Per SAE site: first-order estimates of metric(feature zeroed) - metric(clean), mean over
    prompts, and firing rates over the prompts' real tokens."""
    estimate: dict[str, torch.Tensor]   # site -> [d_sae] fp32
    firing: dict[str, torch.Tensor]     # site -> [d_sae] fp32, share of real tokens with a_f > 0
    clean: float                        # the clean metric, mean over prompts
    first_firing: dict[str, torch.Tensor] | None = None  # site -> [d_sae] share of prompts
    #                                     whose first real token (the attention sink) fires it
    per_prompt: dict[str, torch.Tensor] | None = None    # site -> [n_prompts, d_sae] estimates

    def to_json(self, top: int = 20) -> dict:
        out = {"clean": self.clean, "sites": {}}
        for site, est in self.estimate.items():
            idx = est.abs().topk(min(top, est.numel())).indices
            out["sites"][site] = [{"feature": int(i), "estimate": float(est[i]),
                                   "firing": float(self.firing[site][i])} for i in idx]
        return out


def feature_attribution(model: Model, saes: Sequence[SAE], prompts: Sequence[str],
                        metric: Metric, *, batch_size: int = 8) -> FeatureAttribution:
    """See the module docstring; prompts are texts as the model sees them (left-padded)."""
    if metric.reads != "logits":
        raise ValueError("feature_attribution screens a logit metric (LogitDiff, LogProb)")
    saes = _distinct_sites(saes)
    est = {s.site: [] for s in saes}
    fired = {s.site: torch.zeros(s.d_sae, dtype=torch.float64) for s in saes}
    first = {s.site: torch.zeros(s.d_sae, dtype=torch.float64) for s in saes}
    n_real, clean = 0, 0.0
    batches = encode_batches(model, prompts, batch_size)
    for b in batches:
        real = b.mask.bool()
        probes, acts = {}, {}

        def probe(act, site):
            zero = torch.zeros_like(act, requires_grad=True)
            acts[str(site)], probes[str(site)] = act.detach(), zero
            return act + zero
        with torch.enable_grad(), model.hooks({s.site: probe for s in saes}):
            hidden = model.forward(b.ids, b.mask, base=True).last_hidden_state
            logits = model.unembed(hidden[:, -1])
            values = metric(Readout(logits, logits.detach().log_softmax(-1), None))
            grads = torch.autograd.grad(values.sum(), [probes[s.site] for s in saes],
                                        allow_unused=True)
        with torch.no_grad():
            for sae, g in zip(saes, grads):
                x = sae._flat(acts[sae.site])
                undo: list = []
                a = sae.dense(sae.encode(x, _undo=undo)).float() * real[..., None]  # [B, T, d_sae]
                g = torch.zeros_like(x) if g is None else sae._flat(g)
                proj = sae.output_jacobian(g.float(), undo[0]) @ sae.W_dec.float().T
                est[sae.site].append(-(a * proj).sum(1).double().cpu())          # [B, d_sae]
                fired[sae.site] += (a > 0).sum((0, 1)).double().cpu()
                first[sae.site] += (a[torch.arange(len(a)), b.pad] > 0).sum(0).double().cpu()
        n_real += int(real.sum())
        clean += float(values.detach().sum())
    n = batches[-1].stop
    per = {k: torch.cat(v).float() for k, v in est.items()}
    return FeatureAttribution({k: v.mean(0) for k, v in per.items()},
                              {k: (v / n_real).float() for k, v in fired.items()}, clean / n,
                              {k: (v / n).float() for k, v in first.items()}, per)


def _distinct_sites(saes: Sequence[SAE]) -> list[SAE]:
    saes = list(saes)
    if not saes:
        raise ValueError("no SAEs given")
    sites = [s.site for s in saes]
    if len(set(sites)) != len(sites):
        raise ValueError(f"two SAEs read the same site ({sites}): one SAE per site")
    return sorted(saes, key=lambda s: (parse_site(s.site).layer, s.site))


def top_candidates(attr: FeatureAttribution, n: int) -> list[tuple[str, int]]:
    """(site, feature) of each SAE's n features of largest |estimate|, site by site."""
    return [(site, f) for site, est in attr.estimate.items()
            for f in est.abs().topk(min(n, est.numel())).indices.tolist()]


def label_metric(model: Model, label: str, labels: Sequence[str]) -> LogitDiff:
    """The traced recognition metric: the mean logit of `label`'s first answer tokens minus that
    of every other label's (`emofast.eval.recognition.label_tokens`)."""
    cands = label_tokens(model.tokenizer, labels)
    return LogitDiff(cands[label], [t for lab in labels if lab != label for t in cands[lab]])


class PhaseTrace(NamedTuple):
    sites: list[str]
    candidates: list[tuple[str, int]]   # (site, feature) supporting the metric (exact effect
    #                                     < 0), most negative first
    exact: list[float]                  # their single exact effects, same order
    all_effect: float                   # all of them zeroed at once
    curve_k: list[int]
    curve: list[float]                  # exact effect of zeroing the top k, per curve_k
    k80: int | None
    n_opposing: int = 0                 # the phase's candidates whose zeroing raises the metric

    def to_json(self) -> dict:
        return {"sites": self.sites, "top": [{"site": s, "feature": f, "exact": e} for (s, f), e
                                             in zip(self.candidates[:10], self.exact[:10])],
                "all_effect": self.all_effect, "curve_k": self.curve_k, "curve": self.curve,
                "k80": self.k80, "n_supporting": len(self.candidates),
                "n_opposing": self.n_opposing}


class EmotionTrace(NamedTuple):
    emotion: str
    n_prompts: int
    clean: float
    attribution: FeatureAttribution
    candidates: list[tuple[str, int]]   # per site the top |estimate| features
    estimate: torch.Tensor              # [n] their estimates
    exact: torch.Tensor                 # [n] their exact zero-ablation effects
    spearman: float
    phases: dict[str, PhaseTrace]

    def to_json(self) -> dict:
        return {"emotion": self.emotion, "n_prompts": self.n_prompts, "clean": self.clean,
                "spearman": self.spearman, "n_candidates": len(self.candidates),
                "phases": {k: p.to_json() for k, p in self.phases.items()}}


class FeatureTrace(NamedTuple):
    per_emotion: dict[str, EmotionTrace]
    phases: dict[str, list[str]]

    def to_json(self) -> dict:
        return {"phases": self.phases,
                "per_emotion": {e: t.to_json() for e, t in self.per_emotion.items()}}


def depth_phases(saes: Sequence[SAE], n_layers: int) -> dict[str, list[str]]:
    """Sites in thirds of the model's depth: early, middle, late (the fallback phases)."""
    out = {"early": [], "middle": [], "late": []}
    for s in _distinct_sites(saes):
        third = min(3 * parse_site(s.site).layer // n_layers, 2)
        out[("early", "middle", "late")[third]].append(s.site)
    return {k: v for k, v in out.items() if v}


def trace_features(model: Model, saes: Sequence[SAE], examples: Sequence[Example], *,
                   labels: Sequence[str] = EMOTIONS6,
                   phases: Mapping[str, Sequence[str]] | None = None, n_candidates: int = 8,
                   batch_size: int = 8, progress: bool = True) -> FeatureTrace:
    """See the module docstring. `phases` maps a phase name to its SAE sites (default: thirds of
    the depth, `depth_phases`)."""
    saes = _distinct_sites(saes)
    by_site = {s.site: s for s in saes}
    phases = {k: list(v) for k, v in (phases or depth_phases(saes, model.n_layers)).items()}
    unknown = sorted({s for v in phases.values() for s in v} - set(by_site))
    if unknown:
        raise ValueError(f"phases name sites without an SAE: {unknown}; SAEs read "
                         f"{sorted(by_site)}")
    for name, sites in phases.items():   # a sweep variant holds one FeatureEdit per layer
        layers = [parse_site(s).layer for s in sites]
        if len(set(layers)) != len(layers):
            raise ValueError(f"phase {name!r} holds two SAE sites of one layer ({sites}): "
                             "zeroing them together needs one FeatureEdit per layer; put "
                             "same-layer sites in different phases")
    out = {}
    emotions = [e for e in labels if any(ex.label == e for ex in examples)]
    for emotion in tqdm(emotions, desc="trace features", disable=not progress):
        prompts = [recognition_prompt(model, ex.text) for ex in examples if ex.label == emotion]
        metric = label_metric(model, emotion, labels)
        attr = feature_attribution(model, saes, prompts, metric, batch_size=batch_size)
        cands = top_candidates(attr, n_candidates)
        singles = [[FeatureEdit(by_site[s], [f])] for s, f in cands]
        res = sweep(model, prompts, [[]] + singles, metric, scope="all",
                    batch_size=batch_size, progress=False)
        exact = res.values[1:] - res.values[0]
        estimate = torch.tensor([float(attr.estimate[s][f]) for s, f in cands])
        traces = {name: _phase(model, by_site, prompts, metric, sites, cands, exact,
                               batch_size, float(res.values[0]))
                  for name, sites in phases.items()}
        out[emotion] = EmotionTrace(emotion, len(prompts), float(res.values[0]), attr, cands,
                                    estimate, exact, spearman(estimate, exact), traces)
    return FeatureTrace(out, phases)


def _phase(model, by_site, prompts, metric, sites, cands, exact, batch_size, clean
           ) -> PhaseTrace:
    """The phase's supporting candidates (exact single effect < 0), zeroed together and as
    top-k sets."""
    mine = [(c, float(e)) for c, e in zip(cands, exact.tolist()) if c[0] in sites]
    n_opposing = sum(e >= 0 for _, e in mine)
    mine = sorted((ce for ce in mine if ce[1] < 0), key=lambda ce: ce[1])
    if not mine:
        return PhaseTrace(list(sites), [], [], 0.0, [], [], None, n_opposing)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k < len(mine)} | {len(mine)})

    def zeroed(chosen):
        feats: dict[str, list[int]] = {}
        for s, f in chosen:
            feats.setdefault(s, []).append(f)
        return [FeatureEdit(by_site[s], fs) for s, fs in feats.items()]
    variants = [zeroed([c for c, _ in mine[:k]]) for k in ks]
    res = sweep(model, prompts, variants, metric, scope="all", batch_size=batch_size,
                progress=False)
    curve = (res.values - clean).tolist()
    all_effect = curve[-1]
    k80 = None
    if all_effect < 0:
        k80 = next(k for k, c in zip(ks, curve) if c <= CURVE_FRACTION * all_effect)
    return PhaseTrace(list(sites), [c for c, _ in mine], [e for _, e in mine], all_effect, ks,
                      curve, k80, n_opposing)
