"""Tests for emofast.report: JSON writing, PNG plots and the index.html page.

Oracles are independent of the code under test: json.load of the written file against
hand-written expected values, the PNG signature and pixels decoded by matplotlib's reader,
and literal substrings of the HTML page.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch

from emofast.report import (
    Section,
    Table,
    plot_bars,
    plot_heatmap,
    plot_layer_curves,
    plot_scatter_2d,
    write_index,
    write_json,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- JSON

def test_write_json_round_trip(tmp_path: Path) -> None:
    obj = {
        "z_first": 1,  # insertion order must be kept (sort_keys=False)
        "matrix": torch.tensor([[1.0, 2.5], [3.0, 4.0]]),
        "scalar_tensor": torch.tensor(7),
        "f32": np.float32(0.5),
        "i64": np.int64(3),
        "flag": np.bool_(True),
        "array": np.arange(3),
        "pair": (1, "two"),
        "nested": {"vals": [np.float64(0.25), None], 5: "int key"},
        "nan": float("nan"),
    }
    path = write_json(tmp_path / "sub" / "dir" / "report.json", obj)  # parents created
    text = path.read_text()
    assert text.startswith('{\n  "z_first": 1,')  # indent=2
    loaded = json.loads(text)
    assert list(loaded) == list(map(str, obj))
    assert loaded == {
        "z_first": 1,
        "matrix": [[1.0, 2.5], [3.0, 4.0]],
        "scalar_tensor": 7,
        "f32": 0.5,
        "i64": 3,
        "flag": True,
        "array": [0, 1, 2],
        "pair": [1, "two"],
        "nested": {"vals": [0.25, None], "5": "int key"},
        "nan": None,  # strict JSON has no NaN
    }
    assert isinstance(loaded["i64"], int) and isinstance(loaded["flag"], bool)


def test_write_json_unsupported_names_key_path(tmp_path: Path) -> None:
    class Opaque:
        pass

    path = tmp_path / "bad.json"
    with pytest.raises(TypeError, match=r'obj\["layers"\]\[1\]\["model"\].*Opaque'):
        write_json(path, {"layers": [{"model": 1}, {"model": Opaque()}]})
    assert not path.exists()  # nothing half-written
    with pytest.raises(TypeError, match="set"):
        write_json(path, {"s": {1, 2}})


# ----------------------------------------------------------------------------- plots

def _check_png(path: Path, min_bytes: int = 3000) -> np.ndarray:
    """The file is a PNG of real content: signature, sane size, not a blank canvas."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert 200 < width < 4000 and 150 < height < 4000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.02  # something was drawn
    return pixels


def test_plot_layer_curves(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    layers = list(range(12))
    probe = [0.2 + 0.06 * i for i in layers]
    out = plot_layer_curves(tmp_path / "curves.png", layers,
                            {"probe": probe, "centroid": [p - 0.1 for p in probe]},
                            title="Probe accuracy", chance=1 / 6)
    assert out == tmp_path / "curves.png"
    _check_png(out)
    assert matplotlib.get_backend() == backend  # the user's backend is left alone


def test_plot_layer_curves_single_layer_and_errors(tmp_path: Path) -> None:
    _check_png(plot_layer_curves(tmp_path / "one.png", [5], {"probe": [0.7]}, title="one"))
    with pytest.raises(ValueError, match="3 values but there are 2 layers"):
        plot_layer_curves(tmp_path / "x.png", [0, 1], {"probe": [0.1, 0.2, 0.3]}, title="x")


def test_plot_scatter_2d(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    points = torch.randn(60, 2, generator=g)
    labels = ["joy", "anger", "fear", "sadness", "surprise", "disgust"] * 10
    _check_png(plot_scatter_2d(tmp_path / "pca.png", points, labels, title="PCA"))
    # One class, numpy input.
    _check_png(plot_scatter_2d(tmp_path / "one.png", np.ones((3, 2)) * [[1], [2], [3]],
                               ["joy"] * 3, title="one class"))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot_scatter_2d(tmp_path / "x.png", torch.zeros(4, 3), ["a"] * 4, title="x")


def test_plot_heatmap_with_nan(tmp_path: Path) -> None:
    values = np.array([[0.1, 0.9, np.nan], [0.5, 0.3, 0.75]])
    out = plot_heatmap(tmp_path / "heat.png", values, ["joy", "anger"],
                       ["unsteered", "prompted", "steered"], title="Judge accuracy",
                       cbar_label="accuracy", vmin=0, vmax=1)
    _check_png(out)
    # All-NaN and constant grids still render (colour range must not collapse).
    _check_png(plot_heatmap(tmp_path / "nan.png", torch.full((2, 2), float("nan")),
                            ["a", "b"], ["c", "d"], title="all nan"))
    _check_png(plot_heatmap(tmp_path / "const.png", torch.ones(1, 1), ["a"], ["b"], title="c"))
    with pytest.raises(ValueError, match="one label per row"):
        plot_heatmap(tmp_path / "x.png", values, ["joy"], ["a", "b", "c"], title="x")


def test_plot_bars(tmp_path: Path) -> None:
    groups = ["joy", "anger", "fear", "sadness"]
    series = {"unsteered": [0.1, 0.2, 0.15, 0.1], "prompted": [0.8, 0.7, 0.6, 0.9],
              "steered": np.array([0.6, 0.5, math.nan, 0.7])}
    _check_png(plot_bars(tmp_path / "bars.png", groups, series, title="Judge", ylabel="acc"))
    with pytest.raises(ValueError, match="one value per group"):
        plot_bars(tmp_path / "x.png", groups, {"a": [1.0]}, title="x", ylabel="y")


# ----------------------------------------------------------------------------- HTML

def test_write_index(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG_SIGNATURE)
    (tmp_path / "b.png").write_bytes(PNG_SIGNATURE)
    sections = [
        Section("<b>x</b>", "first & <i>para</i>\n\nsecond para", images=["a.png", "b.png"]),
        Section("Table", table=Table(["layer", "acc", "note"],
                                     [[3, 0.123456, None], [4, np.float32(0.5), "<ok>"]])),
    ]
    out = write_index(tmp_path, "Report <1>", sections)
    assert out == tmp_path / "index.html"
    page = out.read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "<title>Report &lt;1&gt;</title>" in page
    assert "<p>first &amp; &lt;i&gt;para&lt;/i&gt;</p>" in page and "<p>second para</p>" in page
    assert '<img src="a.png"' in page and '<img src="b.png"' in page
    for cell in (">3<", ">0.123<", ">\u2013<", ">4<", ">0.500<", ">&lt;ok&gt;<"):
        assert cell in page
    # Self-contained: no scripts, no external resources; no report.json link without the file.
    assert "<script" not in page and "http" not in page
    assert "report.json" not in page
    write_json(tmp_path / "report.json", {"ok": True})
    assert '<a href="report.json">' in write_index(tmp_path, "t", sections).read_text()


def test_write_index_missing_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_index(tmp_path, "t", [Section("s", images=["missing.png"])])
    assert not (tmp_path / "index.html").exists()
    with pytest.raises(ValueError, match="rows? 0 has 1 cells"):
        Table(["a", "b"], [[1]])
