"""PNG plots for report folders: layer curves, 2-D scatters, heatmaps, grouped bars, a null
distribution with marks.

Each function draws one figure, writes it to `path` as a PNG (dpi 120, tight bounding box),
creates parent directories, and returns the path. Figures are built with
`matplotlib.figure.Figure` + `FigureCanvasAgg`, never through pyplot, so plotting works
headless and leaves a user's interactive backend and open figures alone.

    plot_layer_curves(out / "probe.png", layers, {"probe": acc, "centroid": cacc},
                      title="Emotion probe accuracy", chance=1 / 6)
    plot_heatmap(out / "judge.png", acc, emotions, conditions, title="Judge accuracy")

Array arguments accept torch tensors, numpy arrays or nested lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from emofast.report.files import atomic_path

__all__ = ["plot_layer_curves", "plot_scatter_2d", "plot_heatmap", "plot_bars",
           "plot_distribution"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]
DPI = 120


# ----------------------------------------------------------------------------- helpers

def _as_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """Convert a tensor / array / nested list to a float64 numpy array of rank `ndim`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(arr.shape)}")
    return arr


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no pyplot, no global state
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _class_colors(n: int) -> list:
    """Qualitative colours: tab10 up to 10 classes, tab20 up to 20, then a sampled hsv."""
    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def _rotate_if_crowded(ax, labels: Sequence[str], fig_width: float) -> None:
    """Tilt x tick labels when the longest would not fit in its slot of the axes width."""
    slot_inches = 0.75 * fig_width / max(len(labels), 1)  # axes span ~75% of the figure
    longest_inches = 0.08 * max(len(str(s)) for s in labels)  # ~0.08 in per 10pt char
    if longest_inches > 0.9 * slot_inches:
        for t in ax.get_xticklabels():
            t.set_rotation(35)
            t.set_horizontalalignment("right")


# ----------------------------------------------------------------------------- plots

def plot_layer_curves(
    path: str | Path,
    layers: list[int],
    curves: dict[str, list[float]],
    *,
    title: str,
    ylabel: str = "accuracy",
    chance: float | None = None,
    ylim: tuple[float, float] | None = (0, 1.02),
    xlabel: str = "layer",
    mark_best: bool = True,
) -> Path:
    """One line per curve over `layers`; dashed chance line; best layer of the first curve marked.

    `curves` maps a name to one value per layer (NaN allowed: a gap in the line).
    `ylim=None` lets matplotlib choose the y range. For curves over something other than layers
    (e.g. k), set `xlabel` and `mark_best=False`.
    """
    if not curves:
        raise ValueError("curves is empty: pass at least one {name: values per layer}")
    if len(layers) == 0:
        raise ValueError("layers is empty: pass the layer indices the curves were measured at")
    x = np.asarray(layers)
    fig = _new_figure(max(5.0, min(0.25 * len(layers) + 3, 12.0)), 3.8)
    ax = fig.add_subplot()
    for i, (name, values) in enumerate(curves.items()):
        y = _as_array(values, f"curves[{name!r}]", 1)
        if len(y) != len(x):
            raise ValueError(
                f"curves[{name!r}] has {len(y)} values but there are {len(x)} layers; "
                "pass one value per layer"
            )
        ax.plot(x, y, marker="o", markersize=4, linewidth=1.8, label=name, color=f"C{i}")
        if mark_best and i == 0 and np.isfinite(y).any():
            best = int(np.nanargmax(y))
            ax.plot([x[best]], [y[best]], marker="*", markersize=15, color="C0",
                    markeredgecolor="black", linestyle="none", zorder=5,
                    label=f"best {name}: layer {x[best]} ({y[best]:.3f})")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1.2,
                   label=f"chance ({chance:.3g})")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(x) == 1:
        ax.set_xlim(x[0] - 1, x[0] + 1)
    if len(x) <= 16:
        ax.set_xticks(x)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return _save(fig, path)


def plot_scatter_2d(
    path: str | Path,
    points: ArrayLike,
    labels: list[str],
    *,
    title: str,
    xlabel: str = "PC1",
    ylabel: str = "PC2",
) -> Path:
    """Scatter of `points` [N, 2], one colour per distinct label, legend in first-seen order."""
    xy = _as_array(points, "points", 2)  # [N, 2]
    if xy.shape[1] != 2:
        raise ValueError(f"points must have shape [N, 2], got {tuple(xy.shape)}; "
                         "project to 2 dimensions first (e.g. PCA)")
    if len(labels) != len(xy):
        raise ValueError(f"got {len(labels)} labels for {len(xy)} points; pass one per point")
    classes = list(dict.fromkeys(str(s) for s in labels))
    names = np.asarray([str(s) for s in labels])
    fig = _new_figure(6.0, 4.8)
    ax = fig.add_subplot()
    for cls, color in zip(classes, _class_colors(len(classes))):
        sel = names == cls
        ax.scatter(xy[sel, 0], xy[sel, 1], s=22, color=color, alpha=0.8,
                   edgecolors="white", linewidths=0.4, label=f"{cls} ({int(sel.sum())})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    # Outside the axes so the legend never hides points.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              ncol=1 if len(classes) <= 15 else 2, markerscale=1.3)
    return _save(fig, path)


def plot_heatmap(
    path: str | Path,
    values: ArrayLike,
    row_labels: list[str],
    col_labels: list[str],
    *,
    title: str,
    cbar_label: str = "",
    fmt: str = "{:.2f}",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> Path:
    """Annotated heatmap of `values` [R, C]; NaN cells are drawn light grey and read "nan"."""
    v = _as_array(values, "values", 2)  # [R, C]
    R, C = v.shape
    if len(row_labels) != R or len(col_labels) != C:
        raise ValueError(f"values has shape [{R}, {C}] but got {len(row_labels)} row labels "
                         f"and {len(col_labels)} column labels; pass one label per row/column")
    finite = v[np.isfinite(v)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:  # a constant grid: widen so the colour scale is defined
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(vmin=lo, vmax=hi)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#e0e0e0")

    width = min(2.2 + 0.75 * C, 20.0)
    fig = _new_figure(width, min(1.6 + 0.42 * R, 20.0))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(v), cmap=colormap, norm=norm, aspect="auto")
    ax.set_xticks(range(C), [str(s) for s in col_labels])
    ax.set_yticks(range(R), [str(s) for s in row_labels])
    _rotate_if_crowded(ax, col_labels, width)
    fontsize = 9 if R * C <= 100 else 7
    for r in range(R):
        for c in range(C):
            x = v[r, c]
            if not np.isfinite(x):
                ax.text(c, r, "nan", ha="center", va="center", fontsize=fontsize, color="#777777")
                continue
            red, green, blue, _ = colormap(norm(x))
            luminance = 0.299 * red + 0.587 * green + 0.114 * blue
            ax.text(c, r, fmt.format(x), ha="center", va="center", fontsize=fontsize,
                    color="black" if luminance > 0.5 else "white")
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    if cbar_label:
        cbar.set_label(cbar_label)
    ax.set_title(title)
    return _save(fig, path)


def plot_bars(
    path: str | Path,
    groups: list[str],
    series: dict[str, list[float]],
    *,
    title: str,
    ylabel: str,
) -> Path:
    """Grouped bar chart: one cluster per group, one bar (and legend entry) per series."""
    if not series or len(groups) == 0:
        raise ValueError("plot_bars needs at least one group and one series")
    n = len(series)
    width = 0.8 / n
    x = np.arange(len(groups))
    width_in = max(5.0, min(1.0 + 0.35 * n * len(groups) + 0.3 * len(groups), 16.0))
    fig = _new_figure(width_in, 4.0)
    ax = fig.add_subplot()
    annotate = n * len(groups) <= 24
    for i, (name, values) in enumerate(series.items()):
        y = _as_array(values, f"series[{name!r}]", 1)
        if len(y) != len(groups):
            raise ValueError(f"series[{name!r}] has {len(y)} values but there are "
                             f"{len(groups)} groups; pass one value per group")
        xs = x + (i - (n - 1) / 2) * width
        bars = ax.bar(xs, y, width * 0.95, label=name, color=f"C{i}")
        if annotate:
            ax.bar_label(bars, labels=[f"{t:.2f}" if np.isfinite(t) else "" for t in y],
                         fontsize=7, padding=1)
        for xi in xs[~np.isfinite(y)]:  # a missing value is marked, not just absent
            ax.text(xi, 0, "nan", ha="center", va="bottom", fontsize=7, color="gray",
                    rotation=90)
    ax.set_xticks(x, [str(g) for g in groups])
    _rotate_if_crowded(ax, groups, width_in)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_distribution(
    path: str | Path,
    values: ArrayLike,
    marks: dict[str, float],
    *,
    title: str,
    xlabel: str,
) -> Path:
    """Histogram of `values` (a null distribution) with one vertical line per marked value."""
    v = _as_array(values, "values", 1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise ValueError("plot_distribution needs at least one finite value")
    fig = _new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    ax.hist(v, bins=max(5, min(30, len(v) // 2)), color="0.75", edgecolor="white",
            label=f"null ({len(v)})")
    for i, (name, x) in enumerate(marks.items()):
        if np.isfinite(x):
            ax.axvline(x, color=f"C{i}", linewidth=2, label=f"{name} ({x:+.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("arms")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)
