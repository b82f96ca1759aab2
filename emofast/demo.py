"""`emofast demo`: directions, separability and a judged steering grid on one model, as a report.

Stages (each with a progress bar):
1. basic4: mean-pooled resid_post at every layer, held-out probe / nearest-direction accuracy by
   layer, directions against the neutral class, PCA at the best layer.
2. sev6: separability of the six emotions in the instructed SEV prompts (last prompt token),
   train -> test skeletons; group-centred "expressed" directions from the train skeletons
   (extract.sev_directions).
3. steering: each emotion's (layer window, alpha) is chosen on uninstructed prompts built from
   TRAIN skeletons by the judge's mean target probability, counting only fluent replies
   (distinct bigrams >= FLUENT); then unsteered, prompted ("Always reply in {emotion}") and
   steered replies to held-out TEST prompts are judged.
4. language-model preservation of each chosen steering on basic4's neutral sentences.
Writes DIR/report.json, PNG plots and DIR/index.html.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import report
from .data import EMOTIONS6, load_dataset, load_skeletons, sev_prompts
from .directions import diff_of_means, subtract_group_means
from .extract import example_activations, prompt_activations, sev_directions
from .geometry import emotion_pca
from .judge import EmotionJudge
from .metrics import distinct_n, lm_preservation
from .models import Model
from .probes import layer_separability, train_test_split
from .steer import Steering, generate

FLUENT = 0.5  # minimum distinct-bigram ratio for a reply to count in steering selection


@dataclass
class DemoConfig:
    """Sizes of each stage; `quick` fits ~3 minutes on a 2-core CPU."""
    n_train_skeletons: int      # sev6 train skeletons for directions
    n_sep_skeletons: int        # sev6 train skeletons for the separability probe
    n_test_skeletons: int       # sev6 test skeletons for separability and the final table
    n_val_skeletons: int        # train skeletons whose three events select the steering
    grid: tuple[tuple[float, float, float], ...]  # (first, last) layer as fractions of depth, alpha
    max_new_tokens: int
    n_ppl_texts: int            # neutral sentences for perplexity / KL

    @classmethod
    def preset(cls, quick: bool) -> "DemoConfig":
        if quick:  # four configs around where each emotion peaked on SmolLM2 (see extract.py)
            grid = ((0.13, 0.3, 1.5), (0.27, 0.43, 1.5), (0.4, 0.57, 1.0), (0.4, 0.57, 1.5))
            return cls(12, 6, 4, 2, grid, 24, 24)
        grid = tuple((lo, lo + 0.17, a) for lo in (0.07, 0.13, 0.2, 0.27, 0.33, 0.4, 0.47, 0.53)
                     for a in (0.75, 1.0, 1.5, 2.0))
        return cls(36, 36, 12, 6, grid, 40, 128)

    def configs(self, n_layers: int) -> list[tuple[list[int], float]]:
        """The grid as (layers, alpha) for a model of `n_layers` layers."""
        out = []
        for lo, hi, alpha in self.grid:
            a, b = round(lo * n_layers), round(hi * n_layers)
            out.append((list(range(a, max(b, a) + 1)), alpha))
        return out


def _separability(train, train_labels, test, test_labels, path: Path, title: str, chance: float,
                  progress: bool):
    sep = layer_separability(train, train_labels, test, test_labels, progress=progress)
    report.plot_layer_curves(path, sep.layers, {"linear probe": sep.probe_acc,
                                                "nearest direction": sep.centroid_acc},
                             title=title, chance=chance)
    return sep


def stage_basic4(model: Model, out: Path, progress: bool) -> dict:
    data = load_dataset("basic4")
    labels = [e.label for e in data]
    acts = example_activations(model, data, pool="mean", progress=progress)   # [L, N, d]
    split = train_test_split(len(data), 0.25, seed=0, stratify=labels)
    tr, te = split.train_idx, split.test_idx
    sep = _separability(acts[:, tr], [labels[i] for i in tr], acts[:, te], [labels[i] for i in te],
                        out / "basic4_separability.png", "basic4: held-out accuracy by layer", 0.25,
                        progress)
    dirs = diff_of_means(acts[:, tr], [labels[i] for i in tr], baseline="neutral", method="mean_pooled",
                         meta={"model": model.name, "dataset": "basic4"})
    dirs.save(out / "basic4")
    pca = emotion_pca(acts[sep.best_layer], n_components=2)
    report.plot_scatter_2d(out / "basic4_pca.png", pca.projected, labels,
                           title=f"basic4, layer {sep.best_layer} (PCA)")
    return {**sep.to_json(), "n": len(data), "pca_explained": pca.explained_variance_ratio.tolist()}


def stage_sev6(model: Model, cfg: DemoConfig, out: Path, progress: bool):
    train = load_skeletons("sev6", split="train")
    test = load_skeletons("sev6", split="test")[:cfg.n_test_skeletons]
    p_train, p_test = sev_prompts(train[:cfg.n_sep_skeletons]), sev_prompts(test)
    a_train = prompt_activations(model, p_train, progress=progress)
    a_test = prompt_activations(model, p_test, progress=progress)
    y_train, y_test = [p.emotion for p in p_train], [p.emotion for p in p_test]
    sep = _separability(a_train, y_train, a_test, y_test, out / "sev6_separability.png",
                        "sev6 prompts: train -> test skeletons", 1 / 6, progress)
    dirs = sev_directions(model, train[:cfg.n_train_skeletons], progress=progress)
    dirs.save(out / "sev6")
    best = a_train[sep.best_layer][None]                                    # [1, N, d_model]
    pca = emotion_pca(subtract_group_means(best, [p.group for p in p_train])[0], n_components=2)
    report.plot_scatter_2d(out / "sev6_pca.png", pca.projected, y_train,
                           title=f"sev6 group-centred, layer {sep.best_layer} (PCA)")
    return dirs, {**sep.to_json(), "n_train": len(p_train), "n_test": len(p_test),
                  "pca_explained": pca.explained_variance_ratio.tolist()}


def judged_grid(judge: EmotionJudge, texts: list[str], emotions, n_configs: int) -> torch.Tensor:
    """Selection score [E, n_configs]: mean over prompts of judge P(target) x fluent (distinct
    bigrams >= FLUENT); `texts` are ordered emotion, then config, then prompt."""
    E = len(emotions)
    probs = judge.probs(texts).view(E, n_configs, -1, len(judge.labels))
    fluent = (torch.tensor(distinct_n(texts)) >= FLUENT).view(E, n_configs, -1)
    target = torch.stack([probs[i, ..., judge.labels.index(e)] for i, e in enumerate(emotions)])
    return (target * fluent).mean(-1)


def stage_steering(model: Model, dirs, judge: EmotionJudge, cfg: DemoConfig, out: Path,
                   progress: bool) -> dict:
    configs = cfg.configs(model.n_layers)
    names = [f"L{w[0]}-{w[-1]} a{a:g}" for w, a in configs]
    val = sev_prompts(load_skeletons("sev6", split="train")[:cfg.n_val_skeletons], emotions=None,
                      instructed=False)
    rows, prompts = [], []
    for emotion in EMOTIONS6:
        for w, a in configs:
            rows += [(emotion, w, a)] * len(val)
            prompts += val
    texts = generate(model, prompts, steering=Steering.rows(dirs, rows, model.n_layers, scale="rms"),
                     max_new_tokens=cfg.max_new_tokens, batch_size=64, progress=progress)
    grid = judged_grid(judge, texts, EMOTIONS6, len(configs))               # [E, configs]
    report.plot_heatmap(out / "steering_grid.png", grid, list(EMOTIONS6), names,
                        title="steering selection: judge P(target) x fluent, train-skeleton prompts",
                        vmin=0, vmax=1)
    chosen = {e: configs[int(grid[i].argmax())] for i, e in enumerate(EMOTIONS6)}

    test = load_skeletons("sev6", split="test")[:cfg.n_test_skeletons]
    plain = sev_prompts(test, emotions=None, instructed=False)
    instructed = sev_prompts(test)
    steer_rows = [(e, *chosen[e]) for e in EMOTIONS6 for _ in plain]
    all_prompts = plain + instructed + plain * len(EMOTIONS6)
    all_rows = [(None, [], 0.0)] * (len(plain) + len(instructed)) + steer_rows
    replies = generate(model, all_prompts, steering=Steering.rows(dirs, all_rows, model.n_layers,
                                                                  scale="rms"),
                       max_new_tokens=cfg.max_new_tokens, batch_size=64, progress=progress)
    n = len(plain)
    unsteered, prompted, steered = replies[:n], replies[n:n + len(instructed)], replies[n + len(instructed):]
    pred_un = judge.predict(unsteered)
    table = {}
    for i, e in enumerate(EMOTIONS6):
        pr = [r for r, p in zip(prompted, instructed) if p.emotion == e]
        st = steered[i * n:(i + 1) * n]
        table[e] = {"unsteered": sum(p == e for p in pred_un) / n,
                    "prompted": judge.score(pr, [e] * len(pr)).accuracy,
                    "steered": judge.score(st, [e] * n).accuracy,
                    "steered_distinct2": sum(distinct_n(st)) / n,
                    "layers": chosen[e][0], "alpha": chosen[e][1],
                    "example": st[0]}
    conds = ("unsteered", "prompted", "steered")
    report.plot_bars(out / "steering_accuracy.png", list(EMOTIONS6),
                     {c: [table[e][c] for e in EMOTIONS6] for c in conds},
                     title="held-out sev6 prompts: judge accuracy", ylabel="accuracy")
    overall = {c: sum(table[e][c] for e in EMOTIONS6) / len(EMOTIONS6) for c in conds}
    return {"grid": {"configs": names, "emotions": list(EMOTIONS6), "p_target_fluent": grid.tolist()},
            "fluent_threshold": FLUENT, "unsteered_distinct2": sum(distinct_n(unsteered)) / n,
            "per_emotion": table, "overall": overall, "n_test_prompts": n,
            "unsteered_examples": unsteered[:3]}


def stage_preservation(model: Model, dirs, steering: dict, n_texts: int) -> dict:
    neutral = [e.text for e in load_dataset("basic4") if e.label == "neutral"][:n_texts]
    chosen = [steering["per_emotion"][e] for e in EMOTIONS6]
    results = lm_preservation(model, neutral, [
        Steering.single(dirs, e, c["layers"], c["alpha"], model.n_layers, scale="rms")
        for e, c in zip(EMOTIONS6, chosen)])
    return {e: r._asdict() for e, r in zip(EMOTIONS6, results)}


def run_demo(model: Model, out: str | Path, *, quick: bool = True, progress: bool = True,
             config: DemoConfig | None = None) -> dict:
    """Run every stage and write the report folder; returns report.json's content.
    `config` overrides the quick/full preset (tests use tiny sizes)."""
    start, out = time.perf_counter(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or DemoConfig.preset(quick)
    judge = EmotionJudge.load()
    result: dict = {"model": model.name, "mode": "quick" if quick else "full",
                    "device": str(model.device), "stage_s": {}}

    def timed(name, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        result["stage_s"][name] = round(time.perf_counter() - t, 1)
        return value

    result["basic4"] = timed("basic4", stage_basic4, model, out, progress)
    dirs, result["sev6"] = timed("sev6", stage_sev6, model, cfg, out, progress)
    result["steering"] = timed("steering", stage_steering, model, dirs, judge, cfg, out, progress)
    result["preservation"] = timed("preservation", stage_preservation, model, dirs,
                                   result["steering"], cfg.n_ppl_texts)
    result["elapsed_s"] = time.perf_counter() - start
    report.write_json(out / "report.json", result)
    write_index(out, result)
    return result


def write_index(out: Path, r: dict) -> None:
    S, T = report.Section, report.Table
    st, pres = r["steering"], r["preservation"]
    rows = [[e, v["unsteered"], v["prompted"], v["steered"], v["steered_distinct2"],
             f"L{v['layers'][0]}-{v['layers'][-1]}", v["alpha"], pres[e]["ppl_clean"],
             pres[e]["ppl_edited"], pres[e]["kl_mean"]] for e, v in st["per_emotion"].items()]
    rows.append(["mean", st["overall"]["unsteered"], st["overall"]["prompted"],
                 st["overall"]["steered"], None, None, None, None, None, None])
    sections = [
        S("basic4: where emotion becomes linearly separable",
          f"Best layer {r['basic4']['best_layer']}: probe accuracy "
          f"{max(x['probe_acc'] for x in r['basic4']['layers']):.3f} on held-out sentences.",
          images=["basic4_separability.png", "basic4_pca.png"]),
        S("sev6: the six emotions in the instructed prompts",
          f"Best layer {r['sev6']['best_layer']} (train skeletons -> test skeletons).",
          images=["sev6_separability.png", "sev6_pca.png"]),
        S("Steering vs prompting vs unsteered (held-out prompts)",
          "Judge accuracy per emotion; the steering layer window and alpha were chosen on "
          "train-skeleton prompts (grid below). Perplexity and KL on neutral sentences measure "
          "language-model preservation under each chosen steering.",
          images=["steering_accuracy.png", "steering_grid.png"],
          table=T(["emotion", "unsteered", "prompted", "steered", "steered distinct-2", "layers",
                   "alpha", "ppl clean", "ppl steered", "KL"], rows)),
        S("Sample steered replies", "\n\n".join(f"{e}: {v['example']}"
                                                 for e, v in st["per_emotion"].items())),
    ]
    report.write_index(out, f"emofast demo: {r['model']} ({r['mode']}, {r['elapsed_s']:.0f} s)",
                       sections)
