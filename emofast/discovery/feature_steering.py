"""Causal feature steering for emotion recognition, chosen from a few labelled examples.

    choice = choose_feature_steering(model, saes, train, neutral_sentences(24))
    choice.steering                  # a FeatureSteering (or None: nothing within the KL budget)
    control = matched_random(choice.steering, choice.firing, sink=choice.sink, seed=0)

From n labelled training texts per emotion: per emotion e, `feature_attribution` of e's
recognition metric (e's answer tokens against the other labels') on every training text gives
each feature's first-order gain G_e(t, f) = d metric_e / d (scale of f) on text t, what scaling
f up would add to e's answer there. A feature is specific to e when scaling it helps e on e's
texts and not on the others: its score is mean G_e over e's texts minus mean G_e over the other
texts, and each emotion ranks every feature of every SAE by it. Features that fire on a prompt's first real token are left out: that position is
the attention sink, with activations hundreds of times the others', which the SAEs never saw in
training (`emofast sae train` skips first tokens); scaling them there wrecks the model (measured:
neutral KL 0.2 to 0.8 nats for one such feature at factor 2). The steering scales the union of
each emotion's top m remaining features by a factor wherever they fire: a label-free
intervention (at run time it needs no label). m and the factor
are chosen on the training texts only: the best training accuracy among the grid points whose
mean next-token KL on neutral text is within `kl_budget` nats (ties: the lower KL), and only if
it beats the unsteered model there (else no steering is chosen).

`matched_random` is the control that the steering must beat to count as causal: as many random
features per site as the steering scales there, each the nearest in firing rate among the
site's unchosen live features that are not attention-sink features (random among the 5 nearest),
with the same factor.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..data import EMOTIONS6, Example
from ..eval.preservation import lm_preservation
from ..eval.recognition import recognition_prompt, recognize
from ..interventions.features import FeatureSteering
from ..models import Model
from ..sae import SAE
from .features import FeatureAttribution, _distinct_sites, feature_attribution, label_metric

PER_EMOTION = (1, 2, 4, 8)
FACTORS = (2.0, 4.0, 8.0, 16.0)


class Candidate(NamedTuple):
    per_emotion: int
    factor: float
    n_features: int
    train_accuracy: float
    kl_neutral: float
    ppl_change: float           # perplexity on neutral text, steered / clean


class SteeringChoice(NamedTuple):
    steering: FeatureSteering | None
    chosen: Candidate | None
    candidates: list[Candidate]
    unsteered_train_accuracy: float
    kl_budget: float
    ranking: dict[str, list[tuple[str, int, float]]]   # emotion -> (site, feature, specificity)
    firing: dict[str, torch.Tensor]                     # site -> [d_sae] mean firing rate
    sink: dict[str, torch.Tensor]                       # site -> [d_sae] bool, fires on a first
    #                                                     token: never steered

    def to_json(self) -> dict:
        return {"chosen": None if self.chosen is None else self.chosen._asdict(),
                "beats_unsteered": None if self.chosen is None else
                self.chosen.train_accuracy > self.unsteered_train_accuracy,
                "candidates": [c._asdict() for c in self.candidates],
                "unsteered_train_accuracy": self.unsteered_train_accuracy,
                "kl_budget": self.kl_budget,
                "top_features": {e: [{"site": s, "feature": f, "specificity": v}
                                     for s, f, v in r[:8]] for e, r in self.ranking.items()}}


def emotion_attributions(model: Model, saes: Sequence[SAE], examples: Sequence[Example],
                         labels: Sequence[str] = EMOTIONS6, batch_size: int = 8,
                         progress: bool = False) -> dict[str, FeatureAttribution]:
    """Per label: the feature attribution of its recognition metric on every example."""
    prompts = [recognition_prompt(model, ex.text) for ex in examples]
    return {e: feature_attribution(model, saes, prompts, label_metric(model, e, labels),
                                   batch_size=batch_size)
            for e in tqdm(labels, desc="feature attribution", disable=not progress)}


def specificity(attrs: dict[str, FeatureAttribution], truth: Sequence[str]
                ) -> dict[str, dict[str, torch.Tensor]]:
    """emotion -> site -> [d_sae]: mean gain on the emotion's texts minus on the others'
    (gain = -estimate: what scaling the feature up adds to the emotion's metric)."""
    out = {}
    for e, a in attrs.items():
        mine = torch.tensor([t == e for t in truth])
        out[e] = {site: (-per[mine]).mean(0) - (-per[~mine]).mean(0)
                  for site, per in a.per_prompt.items()}
    return out


def choose_feature_steering(model: Model, saes: Sequence[SAE], train: Sequence[Example],
                            neutral: Sequence[str], *, labels: Sequence[str] = EMOTIONS6,
                            per_emotion: Sequence[int] = PER_EMOTION,
                            factors: Sequence[float] = FACTORS, kl_budget: float = 0.1,
                            attributions: dict[str, FeatureAttribution] | None = None,
                            require_gain: bool = True, batch_size: int = 8,
                            progress: bool = True) -> SteeringChoice:
    """See the module docstring; `attributions` (emotion -> FeatureAttribution of its metric on
    every text of `train`, `emotion_attributions`) skips the screen when already computed;
    require_gain=False also accepts a steering that does not beat the unsteered model."""
    saes = _distinct_sites(saes)
    by_site = {s.site: s for s in saes}
    missing = sorted(set(labels) - {ex.label for ex in train})
    if missing:
        raise ValueError(f"choose_feature_steering: no training texts for {missing}")
    if not per_emotion or not factors or min(per_emotion) < 1:
        raise ValueError("per_emotion (>= 1) and factors need at least one value each")
    attrs = attributions or emotion_attributions(model, saes, train, labels, batch_size,
                                                 progress)
    ranking = {}
    sink = {s: torch.stack([a.first_firing[s] for a in attrs.values()]).amax(0) > 0
            for s in by_site}
    for e, per_site in specificity(attrs, [ex.label for ex in train]).items():
        flat = [(site, f, float(v)) for site, score in per_site.items()
                for f, v in enumerate(score.tolist()) if not sink[site][f]]
        ranking[e] = sorted(flat, key=lambda r: -r[2])[:max(per_emotion)]  # most specific first
    firing = {s: torch.stack([a.firing[s] for a in attrs.values()]).mean(0) for s in by_site}
    base = recognize(model, train, labels=labels, batch_size=batch_size, progress=False)
    cands, steerings = [], {}
    grid = [(m, g) for m in sorted(set(per_emotion)) for g in factors]
    for m, g in tqdm(grid, desc="choose feature steering", disable=not progress):
        feats: dict[SAE, set[int]] = {}
        for rows in ranking.values():
            for site, f, _ in rows[:m]:
                feats.setdefault(by_site[site], set()).add(f)
        st = FeatureSteering(feats, g, meta={"per_emotion": m})
        rec = recognize(model, train, labels=labels, intervention=st, batch_size=batch_size,
                        progress=False)
        [pres] = lm_preservation(model, neutral, [st], batch_size=batch_size)
        cands.append(Candidate(m, float(g), st.n_features(), rec.accuracy, pres.kl_mean,
                               pres.ppl_edited / pres.ppl_clean))
        steerings[(m, g)] = st
    ok = [c for c in cands if c.kl_neutral <= kl_budget
          and (c.train_accuracy > base.accuracy or not require_gain)]
    chosen = max(ok, key=lambda c: (c.train_accuracy, -c.kl_neutral)) if ok else None
    steering = None if chosen is None else steerings[(chosen.per_emotion, chosen.factor)]
    if steering is not None:
        steering.meta.update({"train_accuracy": chosen.train_accuracy,
                              "kl_neutral": chosen.kl_neutral, "n_train": len(train),
                              "kl_budget": kl_budget})
    return SteeringChoice(steering, chosen, cands, base.accuracy, kl_budget, ranking, firing,
                          sink)


def matched_random(steering: FeatureSteering, firing: dict[str, torch.Tensor], *,
                   sink: dict[str, torch.Tensor] | None = None, seed: int = 0
                   ) -> FeatureSteering:
    """The random-feature control of `steering` (see the module docstring), drawn from the
    features the steering could have used: never a `sink` feature, never a dead one."""
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for sae, chosen in zip(steering.saes, steering.features):
        rate = firing[sae.site]
        free = rate > 0
        if sink is not None:
            free &= ~sink[sae.site]
        free[chosen] = False
        if int(free.sum()) < len(chosen):
            raise ValueError(f"{sae.site}: {int(free.sum())} live features are left for a "
                             f"random control of {len(chosen)}")
        picked = []
        for f in chosen:
            dist = (rate - rate[f]).abs().masked_fill(~free, float("inf"))
            near = dist.topk(min(5, int(free.sum())), largest=False).indices
            pick = int(near[torch.randint(len(near), (1,), generator=g)])
            free[pick] = False
            picked.append(pick)
        feats[sae] = picked
    return FeatureSteering(feats, steering.factor, scope=steering.scope,
                           meta={"control": "random features matched in site and firing rate",
                                 "seed": seed})
