"""Emotion subspaces and cross-model alignment.

- `emotion_pca`: principal components of activations or directions (centred SVD).
- `subspace_of`: orthonormal basis of the span of E emotion directions.
- `principal_angles`, `subspace_overlap`: compare two subspaces of the same space.
- `fit_alignment`: a map between two models' activation spaces fitted on shared inputs
  (e.g. neutral text run through both), by least squares or orthogonal Procrustes.
- `cross_model_alignment`: do model X's emotion directions, mapped into model Y's space
  through an alignment fitted on neutral text, land on model Y's emotion directions?

    dirs_x = EmotionDirections.load("x").at_layer(12)      # [E, d1]
    dirs_y = EmotionDirections.load("y").at_layer(20)      # [E, d2]
    report = cross_model_alignment(neutral_x, neutral_y, dirs_x, dirs_y)
    report.procrustes.overlap_after

Subspaces are given as row stacks [k, d]; rows need not be orthonormal (they are
orthonormalised). Pure tensor math in fp32. Vocabulary: N (rows), E (emotions), k (subspace
dimension), d / d1 / d2 (model widths).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _matrix(x: Tensor, name: str) -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [rows, d] tensor, got shape {list(x.shape)}")
    return x.detach().to(torch.float32)


class PCAResult(NamedTuple):
    components: Tensor  # [k, d] orthonormal principal axes, by decreasing variance
    explained_variance_ratio: Tensor  # [k] share of the total variance along each axis
    mean: Tensor  # [d] the mean that was subtracted
    projected: Tensor  # [N, k] centred rows in component coordinates


def emotion_pca(acts: Tensor, n_components: int = 2) -> PCAResult:
    """PCA of acts [N, d] by SVD of the centred rows; n_components in 1..min(N, d).

    Each component's sign is fixed so that its largest-magnitude entry is positive.
    """
    x = _matrix(acts, "acts")  # [N, d]
    N, d = x.shape
    if not 1 <= n_components <= min(N, d):
        raise ValueError(f"n_components must be in 1..{min(N, d)} for acts of shape [{N}, {d}], got {n_components}")
    mean = x.mean(dim=0)  # [d]
    xc = x - mean  # [N, d]
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)  # s [r], vh [r, d]
    total = s.pow(2).sum()
    if total <= 0:
        raise ValueError("acts has zero variance (all rows equal): PCA is undefined")
    comps = vh[:n_components]  # [k, d]
    signs = comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)).sign()  # [k, 1]
    comps = comps * signs
    return PCAResult(comps, s[:n_components].pow(2) / total, mean, xc @ comps.T)


def subspace_of(directions: Tensor, k: int) -> Tensor:
    """Orthonormal basis [k, d] of the top-k span of directions [E, d] (uncentred SVD)."""
    dirs = _matrix(directions, "directions")  # [E, d]
    if not 1 <= k <= min(dirs.shape):
        raise ValueError(f"k must be in 1..{min(dirs.shape)} for directions of shape {list(dirs.shape)}, got {k}")
    _, s, vh = torch.linalg.svd(dirs, full_matrices=False)  # vh [r, d]
    if s[k - 1] <= 1e-6 * s[0]:
        raise ValueError(f"directions span fewer than k={k} dimensions (singular values {s.tolist()}): lower k")
    return vh[:k]  # [k, d]


def _orthonormal_columns(a: Tensor, name: str) -> Tensor:
    """QR of a.T: an orthonormal [d, k] basis of the rows of a [k, d]; raises if rank < k."""
    q, r = torch.linalg.qr(a.T)  # q [d, k], r [k, k]
    diag = r.diagonal().abs()
    if a.shape[0] > a.shape[1] or (diag <= 1e-6 * diag.max().clamp_min(1e-30)).any():
        raise ValueError(f"{name} rows are linearly dependent (shape {list(a.shape)}): pass an independent basis")
    return q


def principal_angles(A: Tensor, B: Tensor) -> Tensor:
    """Principal angles in radians, ascending, between the row spans of A [k1, d] and B [k2, d]: [min(k1, k2)]."""
    a, b = _matrix(A, "A"), _matrix(B, "B")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B live in different spaces (d={a.shape[1]} vs d={b.shape[1]}): align them first")
    qa, qb = _orthonormal_columns(a, "A"), _orthonormal_columns(b, "B")  # [d, k1], [d, k2]
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)  # [min(k1, k2)] descending
    return torch.arccos(cos)  # ascending


def subspace_overlap(A: Tensor, B: Tensor) -> float:
    """Mean cos^2 of the principal angles: 1 for the same subspace, about k/d for random ones."""
    return torch.cos(principal_angles(A, B)).pow(2).mean().item()


class Alignment(NamedTuple):
    """An affine map from space X (d1) to space Y (d2): y ~ (x - x_mean) @ matrix + y_mean."""

    matrix: Tensor  # [d1, d2] linear part, fitted on centred data
    x_mean: Tensor  # [d1]
    y_mean: Tensor  # [d2]
    method: str  # "lstsq", "ridge" or "procrustes"

    def apply(self, x: Tensor) -> Tensor:
        """Map points (activations) [..., d1] -> [..., d2], means included."""
        return (x.to(torch.float32) - self.x_mean) @ self.matrix + self.y_mean

    def map_directions(self, v: Tensor) -> Tensor:
        """Map directions (differences of points) [..., d1] -> [..., d2]: linear part only."""
        return v.to(torch.float32) @ self.matrix


def fit_alignment(X: Tensor, Y: Tensor, method: Literal["lstsq", "ridge", "procrustes"] = "lstsq",
                  *, ridge: float = 0.0) -> Alignment:
    """Fit X [N, d1] -> Y [N, d2] on paired rows, both centred on their means first.

    lstsq: matrix = argmin ||Xc @ M - Yc|| (minimum-norm when Xc is rank deficient).
    ridge: argmin ||Xc @ M - Yc||^2 + ridge * N * mean(Xc^2) * ||M||^2 (the penalty relative to
    the data's scale, so one grid of `ridge` serves models of any residual norm).
    procrustes: matrix = U @ Vh from the SVD of Xc.T @ Yc: orthogonal when d1 == d2, with
    orthonormal rows (d1 <= d2) or columns (d1 > d2) otherwise; a pure rotation, no scaling.
    """
    x, y = _matrix(X, "X"), _matrix(Y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X has {x.shape[0]} rows but Y has {y.shape[0]}: rows must be the same inputs in both models")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 paired rows to fit an alignment")
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)  # [d1], [d2]
    xc, yc = x - x_mean, y - y_mean  # [N, d1], [N, d2]
    if method == "lstsq":
        matrix = torch.linalg.lstsq(xc, yc, driver="gelsd").solution  # [d1, d2]
    elif method == "ridge":
        u, s, vh = torch.linalg.svd(xc, full_matrices=False)  # ridge solution through the SVD
        lam = ridge * xc.pow(2).mean() * xc.shape[0]
        matrix = vh.T @ ((s / (s.pow(2) + lam))[:, None] * (u.T @ yc))  # [d1, d2]
    elif method == "procrustes":
        u, _, vh = torch.linalg.svd(xc.T @ yc, full_matrices=False)  # u [d1, r], vh [r, d2]
        matrix = u @ vh  # [d1, d2]
    else:
        raise ValueError(f"unknown alignment method {method!r}: use 'lstsq', 'ridge' or "
                         "'procrustes'")
    return Alignment(matrix, x_mean, y_mean, method)


RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def choose_ridge(X: Tensor, Y: Tensor, ridges=RIDGES, *, holdout: float = 0.2,
                 seed: int = 0) -> tuple[float, dict[float, float]]:
    """The ridge of least held-out error: fit on a seeded (1 - holdout) share of the paired
    rows, score the rest by relative squared error ||Y - map(X)||^2 / ||Y - mean||^2.
    Returns (best ridge, {ridge: held-out relative error})."""
    x, y = _matrix(X, "X"), _matrix(Y, "Y")
    n_test = int(round(holdout * x.shape[0]))
    if not 2 <= n_test <= x.shape[0] - 2:
        raise ValueError(f"choose_ridge needs >= 2 rows on each side of the split, have "
                         f"{x.shape[0]} rows and holdout={holdout}")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    errors = {}
    for r in ridges:
        fit = fit_alignment(x[train], y[train], "ridge", ridge=r)
        resid = (fit.apply(x[test]) - y[test]).pow(2).sum()
        errors[float(r)] = float(resid / (y[test] - y[train].mean(0)).pow(2).sum())
    return min(errors, key=errors.get), errors


def coordinate_overlap(A: Tensor, B: Tensor) -> float:
    """`subspace_overlap` of subspaces of two different spaces, R^d1 and R^d2, compared on their
    first min(d1, d2) coordinates (each basis truncated, then orthonormalised): the only
    comparison there is before any alignment, meaningful only against `random_overlap`."""
    d = min(A.shape[-1], B.shape[-1])
    return subspace_overlap(A[:, :d], B[:, :d])


def random_overlap(k: int, d1: int, d2: int, *, n: int = 200, seed: int = 0) -> tuple[float, float]:
    """Chance level of `coordinate_overlap` for random k-dim subspaces of R^d1 and R^d2: (mean,
    95th percentile) over n seeded Gaussian draws."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([coordinate_overlap(torch.randn(k, d1, generator=g),
                                            torch.randn(k, d2, generator=g)) for _ in range(n)])
    return float(vals.mean()), float(vals.quantile(0.95))


class AlignmentStats(NamedTuple):
    """How well one alignment method maps X's emotion subspace onto Y's."""

    overlap_before: float | None  # subspace_overlap of the raw top-k subspaces; None if d1 != d2
    overlap_after: float  # subspace_overlap of the mapped dirs_X subspace and dirs_Y's
    cosine_after: list[float]  # [E] cosine of each mapped direction with Y's, emotion order
    chance: float  # k / d2, the expected overlap of two random k-dim subspaces of R^d2


class CrossModelAlignment(NamedTuple):
    lstsq: AlignmentStats
    procrustes: AlignmentStats

    def to_json(self) -> dict:
        """{"lstsq": {...}, "procrustes": {...}} with the AlignmentStats fields."""
        return {name: stats._asdict() for name, stats in self._asdict().items()}


def cross_model_alignment(
    neutral_X: Tensor, neutral_Y: Tensor, dirs_X: Tensor, dirs_Y: Tensor, *, k: int | None = None
) -> CrossModelAlignment:
    """Map model X's emotion directions into model Y's space and compare them with Y's.

    neutral_X [N, d1], neutral_Y [N, d2]: the same N neutral inputs run through both models.
    dirs_X [E, d1], dirs_Y [E, d2]: the same E emotions, in the same order.
    k: subspace dimension; default E - 1 (at least 1), because mean-baseline directions
    sum to about zero and span only E - 1 dimensions.

    Returns the AlignmentStats of each method (least squares, orthogonal Procrustes).
    """
    dx, dy = _matrix(dirs_X, "dirs_X"), _matrix(dirs_Y, "dirs_Y")
    if dx.shape[0] != dy.shape[0]:
        raise ValueError(
            f"dirs_X has {dx.shape[0]} emotions but dirs_Y has {dy.shape[0]}: pass the same emotions in the same order"
        )
    if dx.shape[1] != neutral_X.shape[-1] or dy.shape[1] != neutral_Y.shape[-1]:
        raise ValueError(
            f"width mismatch: neutral_X {list(neutral_X.shape)} vs dirs_X {list(dx.shape)}, "
            f"neutral_Y {list(neutral_Y.shape)} vs dirs_Y {list(dy.shape)}"
        )
    E, d1, d2 = dx.shape[0], dx.shape[1], dy.shape[1]
    k = max(E - 1, 1) if k is None else k
    basis_y = subspace_of(dy, k)  # [k, d2]
    before = subspace_overlap(subspace_of(dx, k), basis_y) if d1 == d2 else None
    stats = []
    for method in ("lstsq", "procrustes"):
        mapped = fit_alignment(neutral_X, neutral_Y, method).map_directions(dx)  # [E, d2]
        stats.append(AlignmentStats(before, subspace_overlap(subspace_of(mapped, k), basis_y),
                                    F.cosine_similarity(mapped, dy, dim=-1).tolist(), k / d2))
    return CrossModelAlignment(*stats)
