"""The statistics of the brittleness question: arms compared at matched output KL.

    fit = kl_fit(null_kl, null_metric)          # metric ~ a + b log(KL) over the random null
    res = fit.residual(arm_kl, arm_metric)      # below 0: worse than the null at that KL
    p = permutation_p(res, null_residuals)      # one-sided: as low as the arm's, or lower
    lo, hi = bootstrap_ci(statistic, n_items, n_boot=2000, seed=0)
    holm([p1, p2, ...])                          # Holm-adjusted p-values, same order

Depth confounds output KL (an early error passes through more layers), so an arm's metric is
judged by its residual from what the random layer sets of the same size lose at the same KL.
The null residuals are leave-one-out (each null arm against the fit of the others), so a null
arm is scored exactly as a tested arm is.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch


class KLFit(NamedTuple):
    a: float
    b: float

    def predict(self, kl: float) -> float:
        return self.a + self.b * math.log(max(kl, 1e-12))

    def residual(self, kl: float, metric: float) -> float:
        return metric - self.predict(kl)


def kl_fit(kl: Sequence[float], metric: Sequence[float]) -> KLFit:
    """Least squares metric ~ a + b log(KL) (b = 0 when the KLs do not vary)."""
    if len(kl) < 2:
        raise ValueError(f"kl_fit needs at least 2 arms, got {len(kl)}")
    x = torch.tensor([math.log(max(k, 1e-12)) for k in kl], dtype=torch.float64)
    y = torch.tensor(list(metric), dtype=torch.float64)
    xc = x - x.mean()
    den = float((xc * xc).sum())
    b = float((xc * (y - y.mean())).sum()) / den if den > 1e-18 else 0.0
    return KLFit(float(y.mean()) - b * float(x.mean()), b)


def loo_residuals(kl: Sequence[float], metric: Sequence[float]) -> list[float]:
    """Each arm's residual from the fit of all the others."""
    out = []
    for i in range(len(kl)):
        rest = [j for j in range(len(kl)) if j != i]
        out.append(kl_fit([kl[j] for j in rest], [metric[j] for j in rest]).residual(
            kl[i], metric[i]))
    return out


def permutation_p(observed: float, null: Sequence[float], alternative: str = "less") -> float:
    """(1 + #{null at least as extreme}) / (1 + n): the smallest p with n null draws is
    1 / (n + 1). alternative "less": extreme = as low or lower; "greater": as high or higher."""
    if not null:
        raise ValueError("permutation_p needs a non-empty null")
    if alternative == "less":
        k = sum(v <= observed for v in null)
    elif alternative == "greater":
        k = sum(v >= observed for v in null)
    else:
        raise ValueError(f"alternative is 'less' or 'greater', got {alternative!r}")
    return (1 + k) / (1 + len(null))


def bootstrap_ci(statistic: Callable[[list[int]], float], n: int, *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of statistic(indices) over n_boot resamples of range(n) with
    replacement (resamples whose statistic is not finite are dropped)."""
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_boot):
        v = statistic(torch.randint(n, (n,), generator=gen).tolist())
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    t = torch.tensor(vals, dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(t, q).tolist()
    return lo, hi


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def spearman_brown(a: Sequence[float], b: Sequence[float]) -> float:
    """Split-half reliability of a metric over arms: the Pearson r of its two half-text
    values, stepped up to full length (2r / (1 + r)); nan with fewer than 3 arms or no
    variance."""
    if len(a) < 3:
        return float("nan")
    x, y = torch.tensor(list(a), dtype=torch.float64), torch.tensor(list(b), dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    den = float((x.pow(2).sum() * y.pow(2).sum()).sqrt())
    if den == 0 or not math.isfinite(den):
        return float("nan")
    r = float((x * y).sum()) / den
    return 2 * r / (1 + r) if r > -1 else float("nan")


def interpolate_log(kl: Sequence[float], metric: Sequence[float], at: float) -> float:
    """The metric at KL `at` by linear interpolation in log(KL) between the arms' points (sorted
    by KL); nan outside their range (no extrapolation)."""
    pts = sorted(zip(kl, metric))
    x = [math.log(max(k, 1e-12)) for k, _ in pts]
    t = math.log(max(at, 1e-12))
    for (x0, (_, y0)), (x1, (_, y1)) in zip(zip(x, pts), zip(x[1:], pts[1:])):
        if x0 <= t <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (t - x0) / (x1 - x0)
    return float("nan")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (ties handled; nan when either is constant)."""
    a, b = torch.tensor(list(x), dtype=torch.float64), torch.tensor(list(y), dtype=torch.float64)
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: {len(a)} vs {len(b)} values")
    sa = torch.sign(a[:, None] - a[None, :]).triu(1)
    sb = torch.sign(b[:, None] - b[None, :]).triu(1)
    den = math.sqrt(float(sa.abs().sum()) * float(sb.abs().sum()))
    return float((sa * sb).sum()) / den if den > 0 else float("nan")


def jaccard_top(x: Sequence[float], y: Sequence[float], k: int = 10) -> float:
    """Jaccard overlap of the k largest |x| and the k largest |y| (indices)."""
    a, b = torch.tensor(list(x)).abs(), torch.tensor(list(y)).abs()
    k = min(k, len(a))
    top_a, top_b = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def t_cdf(t: float, df: int) -> float:
    """Student-t CDF at t with df degrees of freedom (Simpson's rule on the density; |error|
    below 1e-9 for df >= 1 at the usual |t| < 50)."""
    if df < 1:
        raise ValueError(f"t_cdf needs df >= 1, got {df}")
    x = torch.linspace(0.0, abs(t), 20001, dtype=torch.float64)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = torch.exp(logc - (df + 1) / 2 * torch.log1p(x * x / df))
    h = float(x[1] - x[0]) if abs(t) > 0 else 0.0
    w = torch.ones_like(x)
    w[1:-1:2], w[2:-1:2] = 4, 2
    area = float((w * pdf).sum()) * h / 3
    return 0.5 + area if t >= 0 else 0.5 - area


def prediction_p(observed: float, null: Sequence[float]) -> float:
    """One-sided p that a new draw from the null's (normal) distribution is as low as
    `observed`: the t prediction interval, (obs - mean) / (sd sqrt(1 + 1/n)) with n - 1 df.
    Unlike `permutation_p` it is not limited to multiples of 1 / (n + 1)."""
    n = len(null)
    if n < 3:
        raise ValueError(f"prediction_p needs at least 3 null values, got {n}")
    v = torch.tensor(list(null), dtype=torch.float64)
    sd = float(v.std())
    if sd == 0:
        return 0.0 if observed < float(v.mean()) else 1.0
    return t_cdf((observed - float(v.mean())) / (sd * math.sqrt(1 + 1 / n)), n - 1)
