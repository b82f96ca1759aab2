"""`run_circuits`: emotion circuits end to end on one model, and the control comparison.

    r = run_circuits(model, "out/circuits", quick=True)   # report.json, PNGs, index.html
    r["control"]["overall"]   # judge accuracy: modulation, steering, prompting, unsteered

Sublayer importance, one circuit per emotion under a neuron/head budget (`emofast.circuits`),
then `compare_control`: circuit modulation vs residual steering vs prompting on held-out sev6
prompts, judged by the offline judge, with LM preservation on neutral sentences.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from . import report
from .circuits import (EMOTION_WORDS, Circuit, Modulation, SublayerImportance, UnitDifferences,
                       assemble_circuit, emotion_metrics, importance_prompts, sublayer_importance,
                       unit_differences, unit_scores)
from .data import EMOTIONS6, VALENCES, load_dataset, load_skeletons, sev_prompts
from .demo import DemoConfig, judged_grid, stage_preservation, stage_steering
from .directions import EmotionDirections
from .extract import cached_sev_directions
from .judge import EmotionJudge
from .metrics import distinct_n, lm_preservation
from .models import Model
from .steer import generate


@dataclass
class CircuitConfig:
    """Sizes and choices of `run_circuits`; `quick` fits ~10 minutes on a 2-core CPU."""
    n_direction_skeletons: int | None  # train skeletons for residual directions (None: all,
    #                                    the set `emofast steer` caches)
    n_train_skeletons: int      # train skeletons whose expressed prompts give unit differences
    n_importance_skeletons: int  # train skeletons whose instructed prompts rank sublayers
    importance_valences: tuple[str, ...]
    importance_per_emotion: bool  # one sweep per emotion (else one shared "feeling" metric)
    n_val_skeletons: int        # train skeletons whose uninstructed prompts choose alpha / steering
    n_test_skeletons: int       # held-out test skeletons of the final table
    budget_neurons: int         # per emotion
    budget_heads: int           # per emotion
    sublayer_fraction: float | None  # units only from this top fraction of the 2L sublayers
    alphas: tuple[float, ...]   # modulation strengths tried on the train-skeleton prompts
    steering_grid: tuple[tuple[float, float, float], ...]  # demo's (first, last, alpha) grid
    max_new_tokens: int
    n_ppl_texts: int            # neutral sentences for perplexity / KL
    words: dict = field(default_factory=lambda: dict(EMOTION_WORDS))  # emotion_metrics words

    def __post_init__(self):
        if self.sublayer_fraction is not None and not 0 < self.sublayer_fraction <= 1:
            raise ValueError(f"sublayer_fraction must be in (0, 1], got {self.sublayer_fraction}")
        if not self.alphas or 0 in self.alphas:
            raise ValueError(f"alphas must be non-empty and non-zero, got {self.alphas}")

    @classmethod
    def preset(cls, quick: bool) -> "CircuitConfig":
        steering = DemoConfig.preset(quick).grid
        if quick:
            return cls(None, 6, 1, ("neutral",), False, 2, 4, 512, 24, 0.5, (1.5, 2.5, 4.0),
                       steering, 24, 24)
        return cls(None, 36, 4, VALENCES, True, 6, 12, 512, 24, 0.5, (1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
                   steering, 40, 128)


def _select_alphas(model, judge, diffs, circuits, cfg: CircuitConfig, progress: bool):
    """Per emotion, the alpha with the best judge P(target) x fluent on train-skeleton prompts."""
    val = sev_prompts(load_skeletons("sev6", split="train")[:cfg.n_val_skeletons], emotions=None,
                      instructed=False)
    rows = [(e, a) for e in EMOTIONS6 for a in cfg.alphas for _ in val]
    texts = generate(model, val * (len(EMOTIONS6) * len(cfg.alphas)),
                     steering=Modulation.rows(diffs, circuits, rows),
                     max_new_tokens=cfg.max_new_tokens, batch_size=64, progress=progress)
    grid = judged_grid(judge, texts, EMOTIONS6, len(cfg.alphas))      # [E, alphas]
    return {e: cfg.alphas[int(grid[i].argmax())] for i, e in enumerate(EMOTIONS6)}, grid


def compare_control(model: Model, judge: EmotionJudge, dirs: EmotionDirections,
                    diffs: UnitDifferences, circuits: Mapping[str, Circuit], out: str | Path, *,
                    config: CircuitConfig | None = None, progress: bool = True) -> dict:
    """Judge accuracy per emotion on held-out sev6 test prompts for circuit modulation,
    residual steering and prompting ("Always reply in {emotion}"), plus distinct-2 and LM
    preservation on neutral sentences. Modulation alpha and the steering (layer window, alpha;
    demo.stage_steering, which writes its grid PNGs to `out`) are chosen on train skeletons."""
    cfg = config or CircuitConfig.preset(True)
    out = Path(out)
    demo_cfg = DemoConfig(0, 0, cfg.n_test_skeletons, cfg.n_val_skeletons, cfg.steering_grid,
                          cfg.max_new_tokens, cfg.n_ppl_texts)
    steering = stage_steering(model, dirs, judge, demo_cfg, out, progress)
    alphas, grid = _select_alphas(model, judge, diffs, circuits, cfg, progress)

    plain = sev_prompts(load_skeletons("sev6", split="test")[:cfg.n_test_skeletons], emotions=None,
                        instructed=False)                             # the prompts steering saw
    n = len(plain)
    texts = generate(model, plain * len(EMOTIONS6),
                     steering=Modulation.rows(diffs, circuits, [(e, alphas[e]) for e in EMOTIONS6
                                                                for _ in plain]),
                     max_new_tokens=cfg.max_new_tokens, batch_size=64, progress=progress)
    neutral = [x.text for x in load_dataset("basic4") if x.label == "neutral"][:cfg.n_ppl_texts]
    mod_pres = lm_preservation(model, neutral, [Modulation.single(diffs, circuits, e, alphas[e])
                                                for e in EMOTIONS6])
    hits = [p == e for p, e in zip(judge.predict(texts), [e for e in EMOTIONS6 for _ in plain])]
    table = {}
    for i, e in enumerate(EMOTIONS6):
        mod, st = texts[i * n:(i + 1) * n], steering["per_emotion"][e]
        table[e] = {"modulation": sum(hits[i * n:(i + 1) * n]) / n, "steering": st["steered"],
                    "prompting": st["prompted"], "unsteered": st["unsteered"],
                    "modulation_distinct2": sum(distinct_n(mod)) / n,
                    "steering_distinct2": st["steered_distinct2"], "modulation_alpha": alphas[e],
                    "steering_layers": st["layers"], "steering_alpha": st["alpha"],
                    "modulation_example": mod[0], "steering_example": st["example"]}
    conds = ("modulation", "steering", "prompting", "unsteered")
    return {"per_emotion": table,
            "overall": {c: sum(table[e][c] for e in EMOTIONS6) / len(EMOTIONS6) for c in conds},
            "preservation": {"modulation": {e: r._asdict() for e, r in zip(EMOTIONS6, mod_pres)},
                             "steering": stage_preservation(model, dirs, steering, cfg.n_ppl_texts)},
            "modulation_grid": {"alphas": list(cfg.alphas), "emotions": list(EMOTIONS6),
                                "p_target_fluent": grid.tolist()},
            "steering_grid": steering["grid"], "n_test_prompts": n}


def plot_sublayer_importance(path: str | Path, imp: SublayerImportance) -> Path:
    """Attention vs MLP zero-ablation effect per layer (mean over emotions if per emotion)."""
    attn, mlp = (imp.attn, imp.mlp) if imp.emotions is None else (imp.attn.mean(0), imp.mlp.mean(0))
    what = "" if imp.emotions is None else f" ({imp.emotions[0]})" if len(imp.emotions) == 1 \
        else f", mean over {len(imp.emotions)} metrics"
    return report.plot_layer_curves(path, list(range(len(attn))), {"attention": attn, "MLP": mlp},
                                    title=f"sublayer zero ablation{what}",
                                    ylabel="metric change (ablated - clean)", ylim=None)


def plot_control(path: str | Path, control: dict) -> Path:
    """Grouped bars: judge accuracy per emotion for each control method."""
    conds = ("modulation", "steering", "prompting", "unsteered")
    table = control["per_emotion"]
    return report.plot_bars(path, list(table), {c: [table[e][c] for e in table] for c in conds},
                            title="held-out sev6 prompts: judge accuracy", ylabel="accuracy")


def run_circuits(model: Model, out_dir: str | Path, quick: bool = True, progress: bool = True,
                 config: CircuitConfig | None = None) -> dict:
    """Sublayer importance, one circuit per emotion, and the control comparison; writes
    out_dir/report.json, PNGs and index.html and returns report.json's content. `config`
    overrides the quick/full preset (tests use tiny sizes)."""
    start, out = time.perf_counter(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or CircuitConfig.preset(quick)
    judge = EmotionJudge.load()
    train = load_skeletons("sev6", split="train")
    result: dict = {"model": model.name, "mode": "quick" if quick else "full", "stage_s": {}}

    def timed(name, fn, *args, **kw):
        t = time.perf_counter()
        value = fn(*args, **kw)
        result["stage_s"][name] = round(time.perf_counter() - t, 1)
        return value

    dirs = timed("directions", cached_sev_directions, model, train[:cfg.n_direction_skeletons],
                 progress=progress)
    diffs = timed("differences", unit_differences, model, train[:cfg.n_train_skeletons],
                  progress=progress)
    prompts = importance_prompts(model, train[:cfg.n_importance_skeletons],
                                 valences=cfg.importance_valences)
    if not cfg.importance_per_emotion:  # every emotion's prompts, one metric
        prompts = [t for texts in prompts.values() for t in texts]
    imp = timed("importance", sublayer_importance, model, prompts,
                emotion_metrics(model, cfg.words, shared=not cfg.importance_per_emotion),
                progress=progress)
    circuits = {}
    for i, e in enumerate(EMOTIONS6):  # importance = drop of the metric when ablated
        row = imp.emotions.index(e) if cfg.importance_per_emotion else 0
        within = {} if cfg.sublayer_fraction is None else dict(
            sublayers=(-imp.attn[row], -imp.mlp[row]),
            n_sublayers=max(1, round(cfg.sublayer_fraction * 2 * model.n_layers)))
        circuits[e] = assemble_circuit(*unit_scores(model, dirs, diffs, e), cfg.budget_neurons,
                                       cfg.budget_heads, **within)
    control = timed("control", compare_control, model, judge, dirs, diffs, circuits, out,
                    config=cfg, progress=progress)

    plot_sublayer_importance(out / "sublayer_importance.png", imp)
    effects = torch.stack([imp.attn, imp.mlp], 1).flatten(0, 1)       # [2E, L]
    lim = float(effects.abs().max())                                  # white = no effect
    report.plot_heatmap(out / "sublayer_importance_emotions.png", effects,
                        [f"{e} {k}" for e in imp.emotions for k in ("attn", "MLP")],
                        [str(x) for x in range(model.n_layers)], vmin=-lim, vmax=lim,
                        title="zero-ablation effect on each metric (ablated - clean)", cmap="RdBu")
    plot_control(out / "control_accuracy.png", control)
    result.update(
        config=vars(cfg),
        importance={"metric": "LogitDiff(emotion's words, other emotions' words) after 'I feel'"
                    if cfg.importance_per_emotion else "LogProb(all emotion words) after 'I feel'",
                    "metrics": imp.emotions, "attn": imp.attn, "mlp": imp.mlp, "clean": imp.clean},
        circuits={e: {**c.to_json(), "n_neurons": c.n_neurons, "n_heads": c.n_heads}
                  for e, c in circuits.items()},
        control=control, elapsed_s=round(time.perf_counter() - start, 1))
    report.write_json(out / "report.json", result)
    _write_index(out, result)
    return result


def _write_index(out: Path, r: dict) -> None:
    S, T = report.Section, report.Table
    c, pm, ps = r["control"], r["control"]["preservation"]["modulation"], \
        r["control"]["preservation"]["steering"]
    rows = [[e, v["modulation"], v["steering"], v["prompting"], v["unsteered"],
             v["modulation_distinct2"], v["steering_distinct2"], v["modulation_alpha"],
             pm[e]["kl_mean"], ps[e]["kl_mean"], pm[e]["ppl_edited"], ps[e]["ppl_edited"]]
            for e, v in c["per_emotion"].items()]
    o = c["overall"]
    rows.append(["mean", o["modulation"], o["steering"], o["prompting"], o["unsteered"]]
                + [None] * 7)
    cols = ["emotion", "modulation", "steering", "prompting", "unsteered", "mod distinct-2",
            "steer distinct-2", "mod alpha", "mod KL", "steer KL", "mod ppl", "steer ppl"]
    sizes = ", ".join(f"{e}: {v['n_neurons']} neurons, {v['n_heads']} heads"
                      for e, v in r["circuits"].items())
    report.write_index(out, f"emofast circuits: {r['model']} ({r['mode']}, {r['elapsed_s']:.0f} s)", [
        S("Sublayer importance", "Zero-ablating each layer's attention and MLP: change of "
          f"{r['importance']['metric']} on instructed prompts.",
          images=["sublayer_importance.png", "sublayer_importance_emotions.png"]),
        S("Circuit modulation vs steering vs prompting (held-out prompts)",
          f"Circuits: {sizes}. Modulation alpha and steering were chosen on train-skeleton "
          "prompts; KL and perplexity on neutral sentences measure LM preservation.",
          images=["control_accuracy.png", "steering_grid.png"], table=T(cols, rows))])
