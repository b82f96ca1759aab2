"""Comparing emotion representations within and across two models (the small-models preprint's
program): how stable a layer's directions are, whether they collapse onto each other, and whether
two models' emotion subspaces correspond, before and after a map fitted on neutral text only.

    s = direction_stability(acts, labels, emotions, baseline="neutral")  # acts [L, N, d]
    a = align_subspaces(neutral_x, neutral_y, basis_x, basis_y)           # one layer pair
    a.ridge, a.procrustes, a.shuffled, a.before, a.chance

Pure tensor math in fp32 on pooled activations (`analysis.activations`); vocabulary as in
`analysis.geometry`: N rows, E emotions, k subspace dimension, d1/d2 the two widths.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .directions import diff_of_means
from .geometry import (choose_ridge, coordinate_overlap, emotion_pca, fit_alignment,
                       random_overlap, subspace_of, subspace_overlap)


class Stability(NamedTuple):
    """Per layer: split-half cosine of each emotion's direction and the mean cosine between
    different emotions' directions (near 1: the directions collapse onto one)."""
    split_half: Tensor          # [L, E] cos(direction from half A, from half B)
    between: Tensor             # [L] mean off-diagonal cosine between emotions' directions
    between_centred: Tensor     # [L] the same with the emotions' own mean as the baseline:
    #                             what they share against the baseline class removed

    def to_json(self) -> dict:
        return {"split_half": self.split_half.tolist(), "between": self.between.tolist(),
                "between_centred": self.between_centred.tolist()}


def direction_stability(acts: Tensor, labels: Sequence[str], emotions: Sequence[str], *,
                        baseline: str = "neutral", seed: int = 0) -> Stability:
    """acts [L, N, d]: unit diff-of-means directions (`diff_of_means`) from all rows for the
    between-emotion cosine, and from two seeded halves of every class's rows (the baseline's
    too) for the split-half cosine."""
    labels = [str(x) for x in labels]
    g = torch.Generator().manual_seed(seed)
    halves = ([], [])
    for c in sorted(set(labels)):
        rows = torch.tensor([i for i, x in enumerate(labels) if x == c])
        if len(rows) < 2:
            raise ValueError(f"split-half stability needs >= 2 rows of {c!r}, got {len(rows)}")
        rows = rows[torch.randperm(len(rows), generator=g)]
        halves[0].append(rows[:len(rows) // 2])
        halves[1].append(rows[len(rows) // 2:])
    dirs = [diff_of_means(acts[:, idx], [labels[i] for i in idx.tolist()], baseline=baseline,
                          emotions=emotions).vectors
            for idx in (torch.cat(halves[0]), torch.cat(halves[1]))]          # [L, E, d] each
    split = (dirs[0] * dirs[1]).sum(-1)                                        # [L, E]
    mine = torch.tensor([i for i, x in enumerate(labels) if x in set(emotions)])
    full, centred = (diff_of_means(a, ls, baseline=b, emotions=emotions).vectors
                     for a, ls, b in ((acts, labels, baseline),
                                      (acts[:, mine], [labels[i] for i in mine.tolist()], "mean")))
    return Stability(split, _mean_off_diagonal(full), _mean_off_diagonal(centred))


def _mean_off_diagonal(dirs: Tensor) -> Tensor:
    """[L, E, d] unit directions -> [L] mean cosine between different emotions."""
    cos = dirs @ dirs.transpose(1, 2)                                          # [L, E, E]
    E = cos.shape[-1]
    return cos[:, ~torch.eye(E, dtype=torch.bool)].mean(-1) if E > 1 else torch.zeros(len(cos))


def pca_basis(acts: Tensor, k: int) -> Tensor:
    """The emotion subspace of one layer: the top-k principal axes [k, d] of the emotion texts'
    activations acts [N, d] (centred)."""
    return emotion_pca(acts, k).components


class PairAlignment(NamedTuple):
    """One layer pair, one subspace size k: overlaps (mean cos^2 of principal angles)."""
    k: int
    before: float               # coordinate_overlap, no map
    chance: float               # random k-dim subspaces, same widths (mean of seeded draws)
    ridge: float                # after the ridge map fitted on neutral pairs
    procrustes: float           # after orthogonal Procrustes (no scaling) on neutral pairs
    shuffled: float             # after a ridge map fitted on shuffled neutral pairs (control)
    ridge_lambda: float         # the ridge chosen by held-out neutral error
    neutral_error: float        # that map's held-out relative error on neutral rows


def neutral_maps(neutral_x: Tensor, neutral_y: Tensor, *, seed: int = 0) -> dict:
    """Maps X -> Y fitted on the same neutral texts run through both models: {"ridge",
    "procrustes", "shuffled"} alignments plus the chosen ridge and its held-out error."""
    lam, errors = choose_ridge(neutral_x, neutral_y, seed=seed)
    perm = torch.randperm(neutral_y.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    return {"ridge": fit_alignment(neutral_x, neutral_y, "ridge", ridge=lam),
            "procrustes": fit_alignment(neutral_x, neutral_y, "procrustes"),
            "shuffled": fit_alignment(neutral_x, neutral_y[perm], "ridge", ridge=lam),
            "lambda": lam, "error": errors[lam]}


def align_subspaces(maps: dict, basis_x: Tensor, basis_y: Tensor, *,
                    chance: float | None = None) -> PairAlignment:
    """Overlap of X's subspace basis_x [k, d1] with Y's basis_y [k, d2]: before any map (on
    shared coordinates) and after each of `neutral_maps`' maps."""
    k, d1, d2 = basis_x.shape[0], basis_x.shape[1], basis_y.shape[1]
    after = {name: subspace_overlap(_span(maps[name].map_directions(basis_x)), basis_y)
             for name in ("ridge", "procrustes", "shuffled")}
    chance = random_overlap(k, d1, d2, n=50)[0] if chance is None else chance
    return PairAlignment(k, coordinate_overlap(basis_x, basis_y), chance, after["ridge"],
                         after["procrustes"], after["shuffled"], maps["lambda"], maps["error"])


def _span(rows: Tensor) -> Tensor:
    """An orthonormal basis of the rows' span (a map may shrink a direction to almost 0)."""
    return subspace_of(rows, rows.shape[0])


class HeldOut(NamedTuple):
    """Per held-out emotion e: the subspace is fitted on the other emotions only."""
    emotions: list[str]
    mapped: list[float]         # ||P d_Y(e)||^2, P onto X's mapped subspace of the others
    own: list[float]            # the same in Y's own subspace of the others (the ceiling)
    chance: float               # k / d2: a random direction's expected energy
    cosine: list[float]         # cos(map(d_X(e)), d_Y(e))
    identified: float           # share of emotions whose mapped d_X(e) is nearest d_Y(e)


def held_out_emotions(map_xy, dirs_x: Tensor, dirs_y: Tensor, emotions: Sequence[str],
                      k: int) -> HeldOut:
    """dirs_x [E, d1], dirs_y [E, d2]: unit directions of the same emotions at one layer pair;
    `map_xy` an `Alignment` fitted on neutral text. Fit the k-dim subspace on E - 1 emotions,
    test on the one left out."""
    E, d2 = dirs_x.shape[0], dirs_y.shape[1]
    if not 1 <= k <= E - 1:
        raise ValueError(f"held-out subspaces need 1 <= k <= E - 1 = {E - 1}, got k={k}")
    mapped_dirs = map_xy.map_directions(dirs_x)                                 # [E, d2]
    energy, own = [], []
    for e in range(E):
        rest = [i for i in range(E) if i != e]
        px = subspace_of(mapped_dirs[rest], k)                                  # [k, d2]
        py = subspace_of(dirs_y[rest], k)
        energy.append(float((px @ dirs_y[e]).pow(2).sum()))
        own.append(float((py @ dirs_y[e]).pow(2).sum()))
    cos = F.normalize(mapped_dirs, dim=-1) @ F.normalize(dirs_y, dim=-1).T     # [E, E]
    identified = float((cos.argmax(1) == torch.arange(E)).float().mean())
    return HeldOut(list(emotions), energy, own, k / d2, cos.diagonal().tolist(), identified)
