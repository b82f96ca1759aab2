"""`emofast discover`: per-emotion head and neuron discovery and top-k ablation curves, as a
report folder.

    result = run_discover(model, DiscoverConfig(), "emofast-discover")   # or .full()
    result.emotions["anger"].top_head()

Per emotion, on instructed sev6 prompts from TRAIN skeletons with the reply prefilled "I feel"
and the metric of `emofast.discovery.emotion_metrics` (logit of the emotion's feeling words
minus the other emotions'), `emofast.discovery.discover_emotion`: the exact head ranking, the
attribution screen against it, the neurons along the emotion's sev6 residual direction, and
top-k ablation curves. Writes DIR/report.json, PNGs and DIR/index.html; given the circuits
report that `emofast discover` writes to DIR/circuits first (`emofast.pipelines.circuits`),
report.json holds it under "circuits" and the index links it.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import report
from ..analysis import default_directions
from ..data import EMOTIONS6, load_skeletons
from ..discovery import (EmotionDiscovery, discover_emotion, emotion_metrics,
                         importance_prompts)
from ..models import Model
from ._config import (Report, check_numbers, checked, feeling_words_option, option,
                      preset_name, report_folder, words_by_emotion, writes_report)

METRIC = ("LogitDiff(emotion's feeling words, other emotions' words) after 'I feel', at the "
          "next token; effects are ablated - clean")


@dataclass
class DiscoverConfig:
    """The defaults are the quick preset (~1.8 minutes per emotion on a 2-core CPU)."""
    n_skeletons: int = option(2, "train skeletons, 3 prompts each (one per event valence)")
    k_max: int = option(64, "top-k curves: k = 1..k_max")
    k_verify: int = option(32, "screen's top heads verified exactly")
    batch_size: int = option(16, "prompts per forward")
    emotions: tuple[str, ...] = option(EMOTIONS6, "emotions to discover")
    feeling_words: tuple[tuple[str, ...], ...] = feeling_words_option()

    def __post_init__(self):
        words_by_emotion(self)
        check_numbers(self, "n_skeletons", "k_max", "k_verify", "batch_size")
        if not self.emotions or set(self.emotions) - set(EMOTIONS6):
            raise ValueError(f"emotions must be some of {EMOTIONS6}, got {self.emotions}")

    @classmethod
    def full(cls) -> "DiscoverConfig":
        return dataclasses.replace(cls(), n_skeletons=12)


@dataclass
class DiscoverResult:
    model: str
    mode: str                   # "quick", "full" or "custom"
    config: DiscoverConfig
    n_prompts_per_emotion: int
    emotions: dict[str, EmotionDiscovery]
    elapsed_s: float
    metric: str = METRIC
    circuits: Report | None = None  # the circuits report beside it, when one was run

    def to_json(self) -> dict:
        out = {"model": self.model, "mode": self.mode,
               "config": dataclasses.asdict(self.config),
               "n_prompts_per_emotion": self.n_prompts_per_emotion, "metric": self.metric,
               "emotions": {e: d.to_json() for e, d in self.emotions.items()}}
        if self.circuits is not None:
            out["circuits"] = self.circuits.to_json()
        return {**out, "elapsed_s": self.elapsed_s}


@writes_report
def run_discover(model: Model, config: DiscoverConfig | None = None,
                 out: str | Path = "emofast-discover", *, circuits: Report | None = None,
                 progress: bool = True) -> DiscoverResult:
    """The whole discovery report (module docstring). `circuits`: a circuits report already
    written to DIR/circuits (`emofast discover` runs that pipeline first); report.json then
    holds it under "circuits" and the index links it."""
    cfg = checked(config, DiscoverConfig, "run_discover")
    start, out = report_folder(out)
    skeletons = load_skeletons("sev6", split="train")[:cfg.n_skeletons]
    prompts = importance_prompts(model, skeletons, emotions=cfg.emotions)
    metrics = emotion_metrics(model, words_by_emotion(cfg))
    dirs = default_directions(model, progress=progress)
    per = {e: discover_emotion(model, prompts[e], metrics[e], dirs, e, k_max=cfg.k_max,
                               k_verify=cfg.k_verify, batch_size=cfg.batch_size,
                               progress=progress)
           for e in cfg.emotions}
    result = DiscoverResult(model.name, preset_name(cfg), cfg, len(prompts[cfg.emotions[0]]),
                            per, round(time.perf_counter() - start, 1), circuits=circuits)
    _plots(out, model, per)
    report.write_json(out / "report.json", result.to_json())
    _write_index(out, result)
    return result


def _plots(out: Path, model: Model, per: dict[str, EmotionDiscovery]) -> None:
    L, H = model.n_layers, model.n_heads
    for e, r in per.items():
        lim = float(r.head_effect.abs().max()) or 1.0
        report.plot_heatmap(out / f"heads_{e}.png", r.head_effect,
                            [str(x) for x in range(L)], [f"H{h}" for h in range(H)],
                            title=f"{e}: zero-ablating each head (ablated - clean)",
                            vmin=-lim, vmax=lim, cmap="RdBu", fmt="{:.1f}")
    ks = next(iter(per.values())).ks
    rankings = {"screen-ranked": "neurons", "direction-ranked": "direction", "random": "random"}
    neurons = {name: torch.tensor([r.curves[key] for r in per.values()]).mean(0)
               for name, key in rankings.items()}
    report.plot_layer_curves(out / "topk_neurons.png", ks, neurons, xlabel="k (neurons ablated)",
                             title=f"top-k neurons ablated together, mean over {len(per)} "
                                   "emotions (ablated - clean)",
                             ylabel="metric change", ylim=None, mark_best=False)
    report.plot_layer_curves(out / "topk_heads.png", ks,
                             {e: r.curves["heads"] for e, r in per.items()},
                             xlabel="k (heads ablated)",
                             title="top-k heads ablated together (ablated - clean)",
                             ylabel="metric change", ylim=None, mark_best=False)
    pts = torch.cat([torch.stack([r.head_effect.flatten(), r.screen_heads.flatten()], 1)
                     for r in per.values()])
    labels = [e for e in per for _ in range(L * H)]
    report.plot_scatter_2d(out / "screen_vs_exact.png", pts, labels,
                           title="heads: attribution estimate vs exact ablation effect",
                           xlabel="exact (sweep)", ylabel="estimate (attribution)")


def _write_index(out: Path, r: DiscoverResult) -> None:
    S, T = report.Section, report.Table
    k = r.config.k_max if not r.emotions else next(iter(r.emotions.values())).ks[-1]
    rows = []
    for e, x in r.emotions.items():
        head, effect = x.top_head()
        curve, d = x.curves["neurons"], x.direction_top[0]
        rows.append([e, x.clean, head, effect, x.spearman_all_heads, f"{x.top10_found}/10",
                     curve[0], curve[min(8, k) - 1], curve[-1], x.curves["direction"][-1],
                     x.curves["random"][-1], f"L{d.layer}.N{d.neuron}"])
    sections = [
        S("Per emotion", f"{r.metric}. {r.n_prompts_per_emotion} prompts per emotion "
          "(instructed sev6, train skeletons). Screen top-10: exact top-10 heads recovered by "
          f"verifying the screen's top {r.config.k_verify}. Neuron columns: effect of "
          "ablating the screen's top k neurons together, the top k by contribution along the "
          "emotion's direction, and k random neurons.",
          table=T(["emotion", "clean", "top head", "its effect", "Spearman screen/exact",
                   "screen top-10", "screen top-1 neuron", f"top-{min(8, k)}", f"top-{k}",
                   f"direction top-{k}", f"{k} random", "top direction neuron"], rows)),
        S("Top-k ablation curves", "Effect of ablating the top-k units together. Neurons: "
          "ranked by the attribution screen (most supportive first), by contribution along "
          "the emotion's residual direction (mean activation x W_down . v), or random.",
          images=["topk_neurons.png", "topk_heads.png"]),
        S("Attribution screen vs exact", images=["screen_vs_exact.png"]),
        S("Head importance (exact zero ablation)",
          images=[f"heads_{e}.png" for e in r.emotions]),
    ]
    if r.circuits is not None:
        sections.append(S("Circuits, modulation vs steering vs prompting",
                          "See circuits/index.html.", images=["circuits/control_accuracy.png"]))
    report.write_index(out, f"emofast discover: {r.model}", sections)
