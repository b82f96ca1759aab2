"""What a quantized arm changes, from a reference `Pass` and the arm's `Pass` on the same tokens.

    output_stats(ref, arm)        next-token KL (mean / median / p99), perplexities, same-top rate
    massive_dims(ref.resid)       the massive-activation dimensions of the reference residual
    drift(ref, arm, massive)      per layer: relative L2 and cosine of the residual, with and
                                  without the massive dimensions
    text_means(pass_, layers)     per text mean residual [len(layers), N, d] (first token left out)
    direction_cosines(...)        re-derived difference-of-means emotion directions against the
                                  reference's, beside the reference's split-half cosine
    probe_accuracy(...)           held-out accuracy of the reference probe frozen, and refit

`output_stats` takes `rows` (a [n] bool token mask) and the direction functions text indices, so
a metric can be recomputed on half the texts: the split-half reliability of each metric.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..analysis.directions import diff_of_means
from ..analysis.probes import fit_probe
from .passes import Pass


def output_stats(ref: Pass, arm: Pass, rows: torch.Tensor | None = None) -> dict[str, float]:
    """llama.cpp's `perplexity --kl-divergence` numbers over the (selected) real tokens: mean,
    median and 99th percentile of KL(reference || arm) per token, both perplexities over the
    tokens that have a next one, their ratio, and the share of tokens whose top token agrees."""
    sel = torch.ones_like(arm.kl, dtype=torch.bool) if rows is None else rows
    kl = arm.kl[sel].double()
    has_next = sel & ~torch.isnan(arm.nll)
    ppl_ref = math.exp(float(ref.nll[has_next].double().mean()))
    ppl_q = math.exp(float(arm.nll[has_next].double().mean()))
    return {"kl_mean": float(kl.mean()), "kl_median": float(kl.median()),
            "kl_p99": float(torch.quantile(kl, 0.99)), "ppl_ref": ppl_ref, "ppl_quant": ppl_q,
            "ppl_change": ppl_q / ppl_ref, "same_top": float(arm.same_top[sel].double().mean()),
            "n_tokens": int(sel.sum())}


def massive_dims(resid: torch.Tensor, ratio: float = 100.0) -> list[int]:
    """Dimensions whose largest |activation| at some layer exceeds `ratio` times that layer's
    median |activation| (the massive activations of Sun et al. 2024), from resid [L, n, d]."""
    a = resid.abs()
    med = a.flatten(1).median(-1).values                                    # [L]
    peak = a.amax(1)                                                        # [L, d]
    return sorted(set((peak > ratio * med[:, None]).nonzero()[:, 1].tolist()))


def drift(r: torch.Tensor, q: torch.Tensor, massive: Sequence[int]) -> dict[str, list[float]]:
    """Per layer, means over tokens of ||h - h_ref|| / ||h_ref|| and of cos(h, h_ref) for the
    reference's and the arm's residuals r, q [L, n, d], on every dimension and with the massive
    ones removed (from per-token sums: no [L, n, d] copies)."""

    def moments(a, b):                                    # [L, n] each: <a,a>, <b,b>, <a,b>
        return (torch.linalg.vecdot(a, a), torch.linalg.vecdot(b, b),
                torch.linalg.vecdot(a, b))
    full = moments(r, q)
    idx = list(massive)
    some = moments(r[..., idx], q[..., idx]) if idx else (0, 0, 0)
    kept = tuple(f - s for f, s in zip(full, some))

    def stats(aa, bb, ab):
        aa, bb = aa.clamp(min=0), bb.clamp(min=0)
        rel = (aa + bb - 2 * ab).clamp(min=0).sqrt() / aa.sqrt().clamp_min(1e-12)
        cos = ab / (aa * bb).sqrt().clamp_min(1e-12)
        return rel.mean(-1).tolist(), cos.mean(-1).tolist()
    rel, cos = stats(*full)
    rel_n, cos_n = stats(*kept)
    return {"rel_l2": rel, "cos": cos, "rel_l2_no_massive": rel_n, "cos_no_massive": cos_n}


def text_means(pass_: Pass, layers: Sequence[int]) -> torch.Tensor:
    """Mean residual of each text over its real tokens after the first (the attention sink;
    a one-token text keeps it): [len(layers), N, d_model]."""
    t = pass_.tokens
    n_tok = torch.bincount(t.text, minlength=t.n_texts)
    use = ~t.first | (n_tok[t.text] == 1)
    x = pass_.resid[list(layers)][:, use]                                   # [l, n', d]
    idx = t.text[use]
    sums = x.new_zeros(x.shape[0], t.n_texts, x.shape[-1]).index_add_(1, idx, x)
    return sums / torch.bincount(idx, minlength=t.n_texts).clamp(min=1)[None, :, None]


def halves(labels: Sequence[str], seed: int = 0) -> tuple[list[int], list[int]]:
    """Two disjoint halves of the texts, each holding half of every label's texts (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    for lab in sorted(set(labels)):
        rows = [i for i, x in enumerate(labels) if x == lab]
        rows = [rows[i] for i in torch.randperm(len(rows), generator=gen).tolist()]
        a += rows[: len(rows) // 2]
        b += rows[len(rows) // 2:]
    return sorted(a), sorted(b)


def _directions(means: torch.Tensor, labels: Sequence[str], rows: Sequence[int],
                layers: Sequence[int]) -> torch.Tensor:
    return diff_of_means(means[:, list(rows)], [labels[i] for i in rows],
                         layers=layers).vectors                              # [l, E, d]


def direction_cosines(ref_means: torch.Tensor, arm_means: torch.Tensor, labels: Sequence[str],
                      layers: Sequence[int], rows: Sequence[int] | None = None) -> torch.Tensor:
    """cos between the arm's and the reference's directions (both from texts `rows`),
    [len(layers), E]."""
    rows = range(len(labels)) if rows is None else rows
    return (_directions(arm_means, labels, rows, layers) *
            _directions(ref_means, labels, rows, layers)).sum(-1)


def split_half_ceiling(ref_means: torch.Tensor, labels: Sequence[str], layers: Sequence[int],
                       n_splits: int = 10) -> torch.Tensor:
    """The reference's own split-half cosine of its directions (the noise ceiling of a
    re-derived direction), averaged over `n_splits` random halvings: [len(layers), E]."""
    out = []
    for seed in range(n_splits):
        a, b = halves(labels, seed)
        out.append((_directions(ref_means, labels, a, layers) *
                    _directions(ref_means, labels, b, layers)).sum(-1))
    return torch.stack(out).mean(0)


def reference_probes(ref_means: torch.Tensor, labels: Sequence[str], train: Sequence[int],
                     seed: int = 0) -> list:
    """One probe per layer of ref_means [l, N, d], fitted on the reference's `train` texts."""
    y = [labels[i] for i in train]
    return [fit_probe(ref_means[li, list(train)], y, seed=seed)
            for li in range(ref_means.shape[0])]


def probe_accuracy(probes: list, ref_means: torch.Tensor, arm_means: torch.Tensor,
                   labels: Sequence[str], train: Sequence[int], test: Sequence[int],
                   seed: int = 0) -> dict[str, list[float]]:
    """Per layer: held-out accuracy of the reference's probe (`reference_probes` on `train`)
    read on the reference and (frozen) on the arm, and of a probe refit on the arm's `train`
    texts."""
    y_tr, y_te = [labels[i] for i in train], [labels[i] for i in test]
    out = {"reference": [], "frozen": [], "refit": []}
    for li, probe in enumerate(probes):
        refit = fit_probe(arm_means[li, list(train)], y_tr, seed=seed)

        def acc(p, x):
            return sum(a == b for a, b in zip(p.predict(x[li, list(test)]), y_te)) / len(y_te)
        out["reference"].append(acc(probe, ref_means))
        out["frozen"].append(acc(probe, arm_means))
        out["refit"].append(acc(refit, arm_means))
    return out
