"""The flow of SAE features over depth: syntactic, semantic and emotional selectivity per layer
(the three-phase flow of arXiv 2604.25866), and shared versus emotion-specific features.

    flow = feature_flow(model, saes, examples)   # Examples with a label and meta["topic"]
    flow.layers[i].shares        # {"syntactic", "semantic", "emotional"}: share of live features
    flow.phases                  # {"syntactic": [sites], "semantic": [...], "emotional": [...]}

Every kind of property is measured the same way: a feature's one-vs-rest AUROC for each class of
the kind, from its activation, with ties averaged (Mann-Whitney):
- syntactic, per token: the token's class from closed word lists (punctuation, determiners,
  pronouns, prepositions, auxiliaries, conjunctions), counting only tokens that are a whole word
  or punctuation mark of the text (a subword piece is never a class); every other token is a
  negative;
- semantic, per text: the text's topic; emotional, per text: its emotion label; a text's
  activation is the feature's maximum over its tokens.
The first token of each text (the attention sink, never seen in SAE training) is left out.
A feature is selective for a kind when some class reaches the kind's threshold t: the smallest
t on a 0.005 grid at which the estimated false-discovery rate, mean over label permutations of
the (feature, class) pairs reaching t, over the observed pairs reaching t, is at most `fdr`
(labels permuted within the same token or text set, class sizes kept). Shares are over the
layer's live features (that fire on some token).

Beside each layer, the linear-probe accuracy (`fit_probe`, held-out quarter) of the SAE's input
for the same three labels: classed tokens; mean-pooled texts for topic and emotion.

Phases (the rule): each kind's share curve is divided by its maximum over layers, and each layer
takes the kind with the largest normalised share; a phase is the set of layers of one kind.
Shared versus specific: an emotion-selective feature is specific when exactly one emotion
reaches the threshold, shared when several do; per emotion, the number of its specific features
and their mean AUROC (their strength).

`feature_directions` turns each emotion's highest-AUROC features into a steering direction: the
unit sum of their decoder rows (what adding the features does to the residual stream).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..data import Example
from ..models import Model
from ..sae import SAE
from ..sites import parse_site
from .directions import EmotionDirections
from .probes import fit_probe, train_test_split

KINDS = ("syntactic", "semantic", "emotional")
WORD_CLASSES = {
    "determiner": "a an the this that these those my your his her its our their some any no "
                  "every each all both either neither another such what which whose".split(),
    "pronoun": "i me you he him she it we us they them myself yourself himself herself itself "
               "ourselves themselves mine yours hers ours theirs who whom someone anyone "
               "everyone nobody something anything everything nothing".split(),
    "preposition": "of in on at by for with about against between into through during before "
                   "after above below to from up down over under again further out off near "
                   "across behind beyond without within along among around toward towards upon "
                   "onto since until like".split(),
    "auxiliary": "am is are was were be been being have has had having do does did can could "
                 "will would shall should may might must".split(),
    "conjunction": "and but or nor so yet because although though while whereas if unless "
                   "whether than".split(),
}
_CLASS_OF = {w: c for c, words in WORD_CLASSES.items() for w in words}
SYNTACTIC_CLASSES = ("punctuation",) + tuple(WORD_CLASSES)
_GRID = torch.arange(0.5, 1.0001, 0.005)


def token_class(word: str) -> str | None:
    """The closed class of a whole word or punctuation mark, or None."""
    if word and not any(c.isalnum() for c in word):
        return "punctuation"
    return _CLASS_OF.get(word.lower())


class FlowLayer(NamedTuple):
    site: str
    layer: int
    n_live: int
    counts: dict[str, int]          # kind -> selective features
    shares: dict[str, float]        # kind -> counts / n_live
    thresholds: dict[str, float | None]  # kind -> AUROC threshold at the FDR (None: no t
    #                                      on the grid reaches it, nothing selective)
    probe: dict[str, float]         # kind -> held-out probe accuracy of the SAE's input
    specific: dict[str, dict]       # emotion -> {"n", "strength"} of its specific features
    n_shared: int                   # emotion-selective features with several emotions
    top_features: dict[str, list]   # emotion -> [(feature, AUROC)], its 8 highest, any feature


class FeatureFlow(NamedTuple):
    layers: list[FlowLayer]
    phases: dict[str, list[str]]    # kind -> sites of the layers in that phase
    fdr: float
    n_texts: int
    n_tokens: int

    def to_json(self) -> dict:
        return {"fdr": self.fdr, "n_texts": self.n_texts, "n_tokens": self.n_tokens,
                "phases": self.phases, "layers": [l._asdict() for l in self.layers]}


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 0 of [N, F], ties sharing the mean of their ranks (fp64)."""
    N = x.shape[0]
    s, idx = x.sort(0)
    pos = torch.arange(N, device=x.device)[:, None].expand_as(s)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = s[1:] != s[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    first = torch.where(starts, pos, 0).cummax(0).values
    last = torch.where(ends, pos, N).flip(0).cummin(0).values.flip(0)
    ranks = torch.empty(s.shape, dtype=torch.float64, device=x.device)
    return ranks.scatter_(0, idx, (first + last).double() / 2 + 1)


def auroc(ranks: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """One-vs-rest AUROC [F] from `average_ranks` [N, F] and a [N] bool class mask."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.full((ranks.shape[1],), float("nan"), dtype=torch.float64)
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _class_aurocs(ranks, labels: list, classes, perms: list[torch.Tensor]):
    """([C, F] observed, [P, C, F] under each permutation) AUROCs."""
    lab = torch.tensor([classes.index(c) if c in classes else -1 for c in labels])
    obs = torch.stack([auroc(ranks, lab == c) for c in range(len(classes))])
    null = torch.stack([torch.stack([auroc(ranks, lab[p] == c) for c in range(len(classes))])
                        for p in perms])
    return obs, null


def fdr_threshold(obs: torch.Tensor, null: torch.Tensor, fdr: float) -> float:
    """Smallest grid t with mean_perm #(null >= t) / #(obs >= t) <= fdr (inf if none: nothing
    is selective)."""
    obs, null = obs.nan_to_num(0.0), null.nan_to_num(0.0)
    for t in _GRID.tolist():
        n_obs = int((obs >= t).sum())
        if n_obs and float((null >= t).sum()) / len(null) / n_obs <= fdr:
            return t
    return float("inf")


def feature_flow(model: Model, saes: Sequence[SAE], examples: Sequence[Example], *,
                 emotions: Sequence[str] | None = None, n_permutations: int = 5,
                 fdr: float = 0.05, batch_size: int = 16, seed: int = 0,
                 progress: bool = True) -> FeatureFlow:
    """See the module docstring. Each example needs a label and meta["topic"]."""
    examples = list(examples)
    if len(examples) < 8:
        raise ValueError(f"feature_flow needs at least 8 texts, got {len(examples)}")
    missing = [i for i, e in enumerate(examples) if "topic" not in e.meta]
    if missing:
        raise ValueError(f"feature_flow: text {missing[0]} has no 'topic' (semantic labels "
                         "come from meta['topic'], as emo6 has them)")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    saes = sorted(saes, key=lambda s: parse_site(s.site).layer)
    sites = [s.site for s in saes]
    if not saes or len(set(sites)) != len(sites):
        raise ValueError(f"feature_flow needs SAEs at distinct sites, got {sites}")
    texts = [e.text for e in examples]
    emo = [e.label for e in examples]
    topics = [str(e.meta["topic"]) for e in examples]
    emotions = list(emotions or sorted(set(emo)))
    tok_class, text_of, xs = _read(model, saes, texts, batch_size, progress)
    g = torch.Generator().manual_seed(seed)
    tok_perms = [torch.randperm(len(tok_class), generator=g) for _ in range(n_permutations)]
    txt_perms = [torch.randperm(len(texts), generator=g) for _ in range(n_permutations)]
    layers = []
    for sae in tqdm(saes, desc="feature flow", disable=not progress):
        x = xs[sae.site]                                              # [n_tok, d_in]
        dev = sae.W_enc.device
        with torch.no_grad():
            acts = torch.cat([sae.dense(sae.encode(c.to(dev))).float().cpu()
                              for c in x.split(2048)])
        live = (acts > 0).any(0)
        acts = acts[:, live]
        per_text = torch.zeros(len(texts), acts.shape[1]).scatter_reduce_(
            0, text_of[:, None].expand_as(acts), acts, "amax", include_self=False)
        r_tok, r_txt = average_ranks(acts), average_ranks(per_text)
        found = {
            "syntactic": _class_aurocs(r_tok, tok_class, SYNTACTIC_CLASSES, tok_perms),
            "semantic": _class_aurocs(r_txt, topics, sorted(set(topics)), txt_perms),
            "emotional": _class_aurocs(r_txt, emo, emotions, txt_perms)}
        t = {k: fdr_threshold(o, n, fdr) for k, (o, n) in found.items()}
        sel = {k: (o.nan_to_num(0.0) >= t[k]) for k, (o, _) in found.items()}   # [C, F]
        counts = {k: int(s.any(0).sum()) for k, s in sel.items()}
        n_live = int(live.sum())
        e_sel, e_auc = sel["emotional"], found["emotional"][0]
        only = e_sel.sum(0) == 1
        specific = {e: {"n": int((e_sel[i] & only).sum()),
                        "strength": float(e_auc[i][e_sel[i] & only].mean())
                        if (e_sel[i] & only).any() else None}
                    for i, e in enumerate(emotions)}
        live_ids = live.nonzero().squeeze(1)
        top = {e: [(int(live_ids[j]), float(e_auc[i][j])) for j in
                   e_auc[i].nan_to_num(0.0).topk(min(8, e_auc.shape[1])).indices.tolist()]
               for i, e in enumerate(emotions)}
        layers.append(FlowLayer(sae.site, parse_site(sae.site).layer, n_live, counts,
                                {k: c / max(n_live, 1) for k, c in counts.items()},
                                {k: v if v != float("inf") else None for k, v in t.items()},
                                _probes(x, tok_class, text_of, topics, emo, seed),
                                specific, int((e_sel.sum(0) > 1).sum()), top))
    return FeatureFlow(layers, _phases(layers), fdr, len(texts), len(tok_class))


def _read(model: Model, saes, texts, batch_size: int, progress: bool):
    """Per kept token (not a text's first, not padding): its class or None, its text index, and
    each SAE's input [n_tok, d_in]."""
    classes, text_of, xs = [], [], {s.site: [] for s in saes}
    for start in tqdm(range(0, len(texts), batch_size), desc="read texts",
                      disable=not progress):
        batch = texts[start:start + batch_size]
        enc = model.encode(batch, offsets=True, padding_side="right")
        seen = {}

        def read(act, site):
            seen[str(site)] = act.detach()
        with torch.no_grad(), model.hooks({s.site: read for s in saes}):
            model.forward(enc["input_ids"], enc["attention_mask"])
        for b, text in enumerate(batch):
            words = {(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)}
            keep = []
            real = [t for t in range(enc["input_ids"].shape[1]) if enc["attention_mask"][b, t]]
            for t in real[1:]:
                lo, hi = (int(v) for v in enc["offset_mapping"][b, t])
                while lo < hi and text[lo].isspace():
                    lo += 1
                if hi <= lo:       # special tokens carry no characters
                    continue
                keep.append(t)
                classes.append(token_class(text[lo:hi]) if (lo, hi) in words else None)
                text_of.append(start + b)
            for s in saes:
                xs[s.site].append(s._flat(seen[s.site][b, keep]).float().cpu())
    return classes, torch.tensor(text_of), {k: torch.cat(v) for k, v in xs.items()}


def _probes(x, tok_class, text_of, topics, emo, seed) -> dict[str, float]:
    out = {}
    classed = [i for i, c in enumerate(tok_class) if c is not None]
    out["syntactic"] = _probe_acc(x[classed], [tok_class[i] for i in classed], seed)
    pooled = torch.zeros(len(topics), x.shape[1]).index_add_(0, text_of, x)
    pooled /= torch.bincount(text_of, minlength=len(topics)).clamp(min=1)[:, None].float()
    out["semantic"] = _probe_acc(pooled, topics, seed)
    out["emotional"] = _probe_acc(pooled, emo, seed)
    return out


def _probe_acc(x: torch.Tensor, labels: list[str], seed: int) -> float:
    if len(set(labels)) < 2 or len(labels) < 8:
        return float("nan")
    split = train_test_split(len(labels), 0.25, seed=seed, stratify=labels)
    probe = fit_probe(x[split.train_idx], [labels[i] for i in split.train_idx], seed=seed)
    pred = probe.predict(x[split.test_idx])
    truth = [labels[i] for i in split.test_idx]
    return sum(p == t for p, t in zip(pred, truth)) / len(truth)


def _phases(layers: list[FlowLayer]) -> dict[str, list[str]]:
    peak = {k: max(l.shares[k] for l in layers) or 1.0 for k in KINDS}
    out = {k: [] for k in KINDS}
    for l in layers:
        out[max(KINDS, key=lambda k: l.shares[k] / peak[k])].append(l.site)
    return {k: v for k, v in out.items() if v}


def feature_directions(flow: FeatureFlow, saes: list[SAE], emotions: list[str], k: int = 4
                       ) -> tuple[EmotionDirections, dict[str, int]]:
    """Per emotion, the unit sum of the decoder rows of its k highest-AUROC features at the
    resid_post SAE layer where their mean AUROC is highest; (directions, emotion -> layer)."""
    by_site = {s.site: s for s in saes}
    layers = [l for l in flow.layers if parse_site(l.site).kind == "resid_post"]
    if not layers:
        raise ValueError("feature steering adds decoder directions to resid_post: the SAE set "
                         "has no resid_post SAE")
    vec, where = {}, {}
    for e in emotions:
        best = max(layers, key=lambda l: sum(a for _, a in l.top_features[e][:k]) /
                   max(len(l.top_features[e][:k]), 1))
        rows = by_site[best.site].W_dec.detach()[[f for f, _ in best.top_features[e][:k]]]
        v = rows.float().sum(0).cpu()
        vec[e], where[e] = v / v.norm(), best.layer
    at = sorted(set(where.values()))
    vectors = torch.stack([torch.stack([vec[e] for e in emotions]) for _ in at])  # [L, E, d]
    return EmotionDirections(vectors, emotions, at, meta={"kind": "SAE decoder directions",
                                                          "k": k}), where
