"""One emotion's heads and neurons: exact head ranking, the attribution screen against it, the
neurons along the emotion's direction, and top-k ablation curves.

    d = discover_emotion(model, prompts, metric, dirs, "anger")
    d.top_head()            # ("L12.H3", -1.7): the head whose zero ablation lowers it most
    d.curves["neurons"]     # effect of ablating the screen's top k neurons together, k = 1..k_max

On the given prompts and metric, at all positions:
1. exact head ranking: zero-ablate each of the L x H heads (batched sweep) -> effect [L, H];
2. attribution screen of every head and neuron (one forward and backward per batch); its rank
   correlation with the exact head effects, and how many of the exact top 10 heads the screen's
   top `k_verify` (verified exactly, as a discovery workflow would) recovers;
3. neuron ranking along the emotion's residual direction: `rank_neurons` projection W_down[j] . v
   and contribution (mean over prompts of each prompt's mean activation, x projection);
4. top-k ablation curves, k = 1..k_max: ablate together the k neurons the screen ranks most
   supportive (most negative estimated effect), the k heads the exact ranking does, k random
   neurons as a control, and the k neurons with the largest contribution along the direction.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..analysis.directions import EmotionDirections
from ..models import Model
from ..sites import sites_for
from ..sweeps import Edit, Metric, sweep
from .attribution import attribution_screen, spearman
from .neurons import rank_neurons

CURVES = ("neurons", "heads", "random", "direction")  # the top-k rankings, in report order


class DirectionNeuron(NamedTuple):
    """A neuron ranked by its contribution along the emotion's residual direction."""
    layer: int
    neuron: int
    contribution: float         # mean activation x projection
    projection: float           # W_down[neuron] . v


class EmotionDiscovery(NamedTuple):
    """Steps 1-4 of the module docstring for one emotion; effects are ablated - clean."""
    clean: float                # the clean metric, mean over prompts
    head_effect: Tensor         # [L, H] exact zero-ablation effect of each head
    screen_heads: Tensor        # [L, H] the attribution screen's estimate
    screen_neurons_top: list    # [(layer, neuron, estimate)] the 20 most supportive neurons
    spearman_all_heads: float   # rank agreement of screen and exact over all heads
    top10_found: int            # exact top-10 heads among the verified screen top k_verify
    k_verify: int
    ks: list[int]               # 1..k_max
    curves: dict[str, list[float]]  # CURVES -> effect per k
    direction_top: list[DirectionNeuron]  # the 10 largest contributions along the direction
    sweep_s: float              # seconds in sweeps
    n_variants: int

    def top_head(self) -> tuple[str, float]:
        """("L{layer}.H{head}", effect) of the head whose ablation lowers the metric most."""
        H = self.head_effect.shape[1]
        top = int(self.head_effect.flatten().argmin())
        return f"L{top // H}.H{top % H}", float(self.head_effect.flatten()[top])

    def to_json(self) -> dict:
        """The report.json entry: the fields, with the curves as curve_<name>."""
        out = {k: v for k, v in self._asdict().items() if k != "curves"}
        out["direction_top"] = [d._asdict() for d in self.direction_top]
        out.update({f"curve_{name}": values for name, values in self.curves.items()})
        return out


def grouped_edits(units: list[tuple[int, int]], site: str) -> list[Edit]:
    """(layer, unit) pairs -> one zero-ablation Edit per layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, u in units:
        by_layer.setdefault(layer, []).append(u)
    return [Edit(layer, site, us) for layer, us in sorted(by_layer.items())]


def discover_emotion(model: Model, prompts: list[str], metric: Metric,
                     directions: EmotionDirections, emotion: str, *, k_max: int = 64,
                     k_verify: int = 32, batch_size: int = 16, seed: int = 0,
                     progress: bool = True) -> EmotionDiscovery:
    """Steps 1-4 of the module docstring for one emotion's prompts and metric; `directions`
    must cover every layer; `seed` draws the random neurons."""
    L, H, N = model.n_layers, model.n_heads, model.d_mlp
    if sorted(directions.layers) != list(range(L)):
        raise ValueError(f"discover needs directions at every layer 0..{L - 1}, got "
                         f"{directions.layers}")
    kw = dict(scope="all", batch_size=batch_size, progress=progress)
    heads = [[Edit(layer, "attn_z", [h])] for layer in range(L) for h in range(H)]
    exact = sweep(model, prompts, [[]] + heads, metric, **kw)
    head_effect = (exact.values[1:] - exact.values[0]).view(L, H)            # [L, H]
    attr = attribution_screen(model, prompts, metric, scope="all", batch_size=batch_size)
    exact_top10 = set(head_effect.abs().flatten().topk(10).indices.tolist())
    screened = attr.heads.abs().flatten().topk(min(k_verify, L * H)).indices
    verified = head_effect.flatten()[screened].abs()                         # exact, as verified
    found = set(screened[verified.argsort(descending=True)[:10]].tolist())

    k_max = min(k_max, L * H)
    ks = list(range(1, k_max + 1))
    acts = model.cache(prompts, sites_for("mlp_act", range(L)), pool="mean",
                       batch_size=batch_size, progress=False)                # [N_prompts, d_mlp]
    ranking = rank_neurons(model, directions, emotion, acts=acts)
    g = torch.Generator().manual_seed(seed)
    orders = {"neurons": (attr.neurons.flatten().argsort()[:k_max], N, "mlp_act"),  # most negative
              "heads": (head_effect.flatten().argsort()[:k_max], H, "attn_z"),
              "random": (torch.randperm(L * N, generator=g)[:k_max], N, "mlp_act"),
              "direction": (ranking.contribution.flatten().argsort(descending=True)[:k_max], N,
                            "mlp_act")}
    variants = {name: [grouped_edits([(i // n, i % n) for i in order[:k].tolist()], site)
                       for k in ks] for name, (order, n, site) in orders.items()}
    # nested sets: each k runs from k-1's state at the new unit's layer (`emofast.sweeps.chain`)
    res = sweep(model, prompts, [[]] + [v for name in CURVES for v in variants[name]], metric,
                engine="chain", **kw)
    effects = (res.values[1:] - res.values[0]).split([len(variants[name]) for name in CURVES])
    neuron_order = orders["neurons"][0].tolist()
    return EmotionDiscovery(
        clean=exact.values[0].item(), head_effect=head_effect, screen_heads=attr.heads,
        screen_neurons_top=[(i // N, i % N, attr.neurons.flatten()[i].item())
                            for i in neuron_order[:20]],
        spearman_all_heads=spearman(attr.heads.flatten(), head_effect.flatten()),
        top10_found=len(found & exact_top10), k_verify=len(screened), ks=ks,
        curves={name: e.tolist() for name, e in zip(CURVES, effects)},
        direction_top=[DirectionNeuron(layer, n, c, ranking.projection[layer, n].item())
                       for layer, n, c in ranking.top(10, by="contribution")],
        sweep_s=exact.elapsed_s + res.elapsed_s,
        n_variants=len(heads) + 1 + sum(len(v) for v in variants.values()))
