"""Report folders: JSON metrics, PNG plots and one self-contained index.html.

    from emofast.report import write_json, plot_layer_curves, write_index, Section, Table

    write_json(out / "report.json", metrics)
    plot_layer_curves(out / "probe.png", layers, {"probe": acc}, title="Probe", chance=1 / 6)
    write_index(out, "Emotion probes", [Section("Probe", "Accuracy by layer.", ["probe.png"])])

files.py writes JSON (tensors and numpy values converted, never pickled), plots.py draws PNGs
with matplotlib's Agg canvas (no pyplot state), html.py writes the index page, timing.py times
a pipeline's stages. Only pipelines write reports; other rooms use files.write_json alone.
"""

from emofast.report.files import write_json
from emofast.report.html import Section, Table, write_index
from emofast.report.plots import (plot_bars, plot_distribution, plot_heatmap, plot_layer_curves,
                                  plot_scatter_2d)
from emofast.report.timing import Stopwatch

__all__ = [
    "write_json",
    "plot_layer_curves",
    "plot_scatter_2d",
    "plot_heatmap",
    "plot_bars",
    "plot_distribution",
    "Section",
    "Table",
    "write_index",
    "Stopwatch",
]
