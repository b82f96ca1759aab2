"""The three measured parts of `emofast crossmodel` beside the within-model statistics: the
subspace alignment over layer pairs, the injection grid, and the head screen."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..analysis.crossmodel import (align_subspaces, held_out_emotions, neutral_maps,
                                   pca_basis)
from ..analysis.directions import EmotionDirections, diff_of_means
from ..analysis.geometry import random_overlap
from ..data import load_skeletons, sev_prompts
from ..discovery import emotion_metrics, importance_prompts
from ..eval import EmotionJudge
from ..interventions import Steering, generate
from ..models import Model
from ..sweeps import Edit, sweep

MAPS = ("ridge", "procrustes", "shuffled")


@dataclass
class PairGrid:
    """Overlaps (mean cos^2 of principal angles) of the two models' emotion subspaces."""
    layers_x: list[int]
    layers_y: list[int]
    grid: dict[str, list[list[float]]]   # before|ridge|procrustes|shuffled -> [len x][len y], k_max
    matched: list[tuple[int, int]]       # depth-matched layer pairs (x layer, its y layer)
    ks: list[int]
    curves: dict[str, list[float]]       # before|chance|chance_p95|ridge|... -> per k, matched mean
    held_out: dict                       # mean over matched pairs, k = E - 2; ridge and shuffled
    ridge_lambda: list[float]            # per matched pair
    neutral_error: list[float]           # per matched pair: held-out relative error of the map

    def to_json(self) -> dict:
        return dict(vars(self))


def _depth_matched(Lx: int, Ly: int, stride: int) -> list[tuple[int, int]]:
    return [(lx, round(lx * (Ly - 1) / max(Lx - 1, 1))) for lx in range(0, Lx, stride)]


def align_pairs(x: Tensor, y: Tensor, labels: list[str], neutral_x: Tensor, neutral_y: Tensor,
                n_base: int, emotions: Sequence[str], cfg, *, progress: bool) -> PairGrid:
    """x [Lx, N, d1], y [Ly, N, d2]: token-level activations of the emotion texts in both
    models; neutral_x/y [L, M, d]: the neutral texts (the first n_base are the baseline)."""
    Lx, Ly, k_max = x.shape[0], y.shape[0], cfg.k_max
    lx_grid, ly_grid = list(range(0, Lx, cfg.pair_stride)), list(range(0, Ly, cfg.pair_stride))
    matched = _depth_matched(Lx, Ly, cfg.pair_stride)
    ks = list(range(1, k_max + 1))
    chance = {k: random_overlap(k, x.shape[2], y.shape[2], n=100, seed=cfg.seed) for k in ks}
    grid = {name: [[float("nan")] * len(ly_grid) for _ in lx_grid] for name in ("before",) + MAPS}
    per_k = {name: {k: [] for k in ks} for name in ("before",) + MAPS}
    held, lambdas, errors = [], [], []
    rows = labels + ["neutral"] * n_base
    pairs = sorted({(a, b) for a in lx_grid for b in ly_grid} | set(matched))
    bases = {}
    for lx, ly in tqdm(pairs, desc="layer pairs", disable=not progress):
        maps = neutral_maps(neutral_x[lx], neutral_y[ly], seed=cfg.seed)
        for side, layer, acts in (("x", lx, x), ("y", ly, y)):
            if (side, layer) not in bases:
                bases[side, layer] = pca_basis(acts[layer], k_max)               # [k_max, d]
        bx, by = bases["x", lx], bases["y", ly]
        if lx in lx_grid and ly in ly_grid:
            a = align_subspaces(maps, bx, by, chance=chance[k_max][0])
            for name in ("before",) + MAPS:
                grid[name][lx_grid.index(lx)][ly_grid.index(ly)] = getattr(a, name)
        if (lx, ly) not in matched:
            continue
        lambdas.append(maps["lambda"])
        errors.append(maps["error"])
        for k in ks:
            a = align_subspaces(maps, bx[:k], by[:k], chance=chance[k][0])
            for name in ("before",) + MAPS:
                per_k[name][k].append(getattr(a, name))
        dx, dy = (diff_of_means(torch.cat([acts[layer], nacts[layer][:n_base]], 0)[None], rows,
                                baseline="neutral", emotions=emotions).vectors[0]
                  for acts, nacts, layer in ((x, neutral_x, lx), (y, neutral_y, ly)))
        held.append([held_out_emotions(maps[name], dx, dy, emotions, len(emotions) - 2)
                     for name in ("ridge", "shuffled")])
    curves = {name: [sum(v[k]) / len(v[k]) for k in ks] for name, v in per_k.items()}
    curves["chance"] = [chance[k][0] for k in ks]
    curves["chance_p95"] = [chance[k][1] for k in ks]
    def mean(field, m=0):
        return [sum(getattr(h[m], field)[i] for h in held) / len(held)
                for i in range(len(emotions))]
    held_out = {"emotions": list(emotions), "k": len(emotions) - 2, "mapped": mean("mapped"),
                "own": mean("own"), "cosine": mean("cosine"), "chance": held[0][0].chance,
                "identified": sum(h[0].identified for h in held) / len(held),
                "shuffled_mapped": mean("mapped", 1), "shuffled_cosine": mean("cosine", 1),
                "shuffled_identified": sum(h[1].identified for h in held) / len(held)}
    return PairGrid(lx_grid, ly_grid, grid, matched, ks, curves, held_out, lambdas, errors)


@dataclass
class Patching:
    """Direction injection: judge P(emotion) and feeling-word rate per emotion x layer x alpha,
    for the emotion's direction and for a random unit direction (the control); alpha 0 is the
    unsteered baseline shared by every cell."""
    layers: list[int]
    alphas: list[float]                  # 0 first
    emotions: list[str]
    judge: dict[str, list]               # "direction"|"random" -> [E][layers][alphas]
    words: dict[str, list]
    examples: dict[str, str]             # emotion -> one reply at the strongest cell

    def to_json(self) -> dict:
        return dict(vars(self))


def _word_rate(texts: list[str], words: Sequence[str]) -> float:
    """The share of texts naming any of the words (whole words, any case): model-free."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    return sum(bool(pattern.search(t)) for t in texts) / len(texts)


def patch_grid(model: Model, dirs: EmotionDirections, cfg, words: dict, judge: EmotionJudge,
               *, progress: bool) -> Patching:
    """Inject each emotion's unit direction (and a random unit direction, the control) at
    resid_post of one layer, every position, scale "rms", into neutral SEV prompts."""
    L = model.n_layers
    layers = sorted({min(L - 1, round(d * (L - 1))) for d in cfg.patch_depths})
    alphas = [0.0] + list(cfg.patch_alphas)
    emotions = list(cfg.patch_emotions)
    skeletons = load_skeletons("sev6", split="train")
    prompts = [replace(p, prefill="I feel") for p in
               sev_prompts(skeletons, emotions=None, valences=("neutral",), instructed=False)
               ][:cfg.n_patch_prompts]
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.nn.functional.normalize(torch.randn(dirs.vectors.shape, generator=g), dim=-1)
    controls = {"direction": dirs, "random": replace(dirs, vectors=noise)}
    cells = [(e, layer, a) for e in emotions for layer in layers for a in cfg.patch_alphas]
    out = {"judge": {}, "words": {}}
    texts_by = {}
    for name, d in controls.items():
        rows = [(None, [], 0.0)] + [(e, [layer], a) for e, layer, a in cells]
        steering = Steering.rows(d, [r for r in rows for _ in prompts], L, scale="rms")
        texts = generate(model, prompts * len(rows), intervention=steering,
                         max_new_tokens=cfg.max_new_tokens, progress=progress)
        probs = judge.probs(texts)                                     # [n, labels]
        P = len(prompts)
        groups = [texts[i * P:(i + 1) * P] for i in range(len(rows))]
        pgroups = [probs[i * P:(i + 1) * P] for i in range(len(rows))]
        j, w = [], []
        for e in emotions:
            col = judge.labels.index(e)
            cell = lambda layer, a: 0 if a == 0 else 1 + cells.index((e, layer, a))
            j.append([[float(pgroups[cell(layer, a)][:, col].mean()) for a in alphas]
                      for layer in layers])
            w.append([[_word_rate(groups[cell(layer, a)], words[e]) for a in alphas]
                      for layer in layers])
            if name == "direction":
                texts_by[e] = groups[cell(layers[len(layers) // 2], alphas[-1])][0]
        out["judge"][name], out["words"][name] = j, w
    return Patching(layers, alphas, emotions, out["judge"], out["words"], texts_by)


@dataclass
class HeadScreen:
    """Exact zero-ablation effect of every head on each emotion's feeling-word metric."""
    emotions: list[str]
    effect: list[list[list[float]]]      # [E][L][H], ablated - clean
    top: dict[str, list]                 # emotion -> [(layer, head, effect)] by |effect|, 5
    l0h0_rank: dict[str, int]            # rank of layer 0 head 0 by |effect| (1 = top)

    def to_json(self) -> dict:
        return dict(vars(self))


def screen_heads(model: Model, cfg, words: dict, *, progress: bool) -> HeadScreen:
    """All L x H single-head zero ablations (every position) through the batched engine, on
    instructed SEV prompts with the reply prefilled "I feel"."""
    L, H = model.n_layers, model.n_heads
    skeletons = load_skeletons("sev6", split="train")[:cfg.n_head_skeletons]
    prompts = importance_prompts(model, skeletons, emotions=cfg.head_emotions)
    metrics = emotion_metrics(model, words)
    variants = [[]] + [[Edit(layer, "attn_z", [h])] for layer in range(L) for h in range(H)]
    effect, top, rank = [], {}, {}
    for e in cfg.head_emotions:
        v = sweep(model, prompts[e], variants, metrics[e], engine="batched",
                  progress=progress).values
        eff = (v[1:] - v[0]).reshape(L, H)
        order = eff.abs().flatten().argsort(descending=True).tolist()
        effect.append(eff.tolist())
        top[e] = [(i // H, i % H, float(eff.flatten()[i])) for i in order[:5]]
        rank[e] = order.index(0) + 1
    return HeadScreen(list(cfg.head_emotions), effect, top, rank)
