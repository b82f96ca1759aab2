"""Controls compared at matched damage: judged emotion expression against the next-token KL each
control costs on neutral text, swept over its strength.

    methods = {"residual steering": Method(lambda rows: Steering.rows(dirs, rows_with_layers)),
               ...}
    md = matched_damage(model, judge, methods, strengths, test_skeletons, neutral_sentences(24))
    md.at(0.1)        # {method: best judge accuracy among strengths with KL <= 0.1 nats}

Each method is a function from rows [(emotion or None, strength)] to a per-row Intervention (as
`Steering.rows` and `Modulation.rows` are). For every method, strength and emotion, the held-out
skeletons' uninstructed prompts (the 2510.11328 task) are answered greedily under the control,
in one batched generation per method, and the offline judge scores the share of replies that
express the target emotion; the cost is the mean next-token KL(clean || controlled) over every
position of the neutral texts (`lm_preservation`). Both are averaged over emotions per strength.
"At KL b" is the best mean accuracy among the strengths whose mean KL is at most b (None when no
strength is that gentle): an accuracy reached by wrecking the model does not count.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

from ..data import EMOTIONS6, Skeleton, sev_prompts
from ..interventions import Intervention, generate
from ..models import Model
from .judge import EmotionJudge
from .preservation import distinct_n, lm_preservation

BUDGETS = (0.1, 0.3, 1.0)
Rows = Callable[[Sequence[tuple[str | None, float]]], Intervention]


class DamageCurve(NamedTuple):
    strengths: list[float]
    accuracy: list[float]                   # per strength, mean over emotions
    kl: list[float]                         # per strength, mean over emotions (nats)
    distinct2: list[float]                  # per strength, mean distinct-bigram ratio
    per_emotion: dict[str, list[float]]     # emotion -> accuracy per strength
    examples: list[str]                     # the first emotion's reply at each strength


class MatchedDamage(NamedTuple):
    curves: dict[str, DamageCurve]
    unsteered: float                        # judge accuracy of the unsteered replies (mean)
    n_prompts: int

    def at(self, budget: float) -> dict[str, float | None]:
        out = {}
        for name, c in self.curves.items():
            ok = [a for a, k in zip(c.accuracy, c.kl) if k <= budget]
            out[name] = max(ok) if ok else None
        return out

    def to_json(self) -> dict:
        return {"unsteered": self.unsteered, "n_prompts": self.n_prompts,
                "at_kl": {str(b): self.at(b) for b in BUDGETS},
                "curves": {k: c._asdict() for k, c in self.curves.items()}}


def matched_damage(model: Model, judge: EmotionJudge, methods: Mapping[str, Rows],
                   strengths: Mapping[str, Sequence[float]], skeletons: Sequence[Skeleton],
                   neutral: Sequence[str], *, emotions: Sequence[str] = EMOTIONS6,
                   max_new_tokens: int = 24, batch_size: int = 64,
                   progress: bool = True) -> MatchedDamage:
    """See the module docstring."""
    if set(methods) != set(strengths) or not methods:
        raise ValueError(f"methods {sorted(methods)} and strengths {sorted(strengths)} must "
                         "name the same non-empty set of controls")
    prompts = sev_prompts(list(skeletons), emotions=None, instructed=False)
    if not prompts:
        raise ValueError("matched_damage: the skeletons give no prompts")
    n = len(prompts)
    unsteered = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=False)
    pred = judge.predict(unsteered)
    base = sum(sum(p == e for p in pred) / n for e in emotions) / len(emotions)
    curves = {}
    for name, rows_of in methods.items():
        grid = [float(s) for s in strengths[name]]
        if not grid:
            raise ValueError(f"{name}: no strengths")
        rows = [(e, s) for s in grid for e in emotions for _ in prompts]
        replies = generate(model, list(prompts) * len(grid) * len(emotions),
                           intervention=rows_of(rows), max_new_tokens=max_new_tokens,
                           batch_size=batch_size, progress=progress)
        cost = lm_preservation(model, neutral, [rows_of([(e, s)]) for s in grid
                                                for e in emotions])
        E = len(emotions)
        per = {e: [] for e in emotions}
        kl, d2, examples = [], [], []
        for i, s in enumerate(grid):
            block = replies[i * E * n:(i + 1) * E * n]
            for j, e in enumerate(emotions):
                mine = block[j * n:(j + 1) * n]
                per[e].append(judge.score(mine, [e] * n).accuracy)
            kl.append(sum(c.kl_mean for c in cost[i * E:(i + 1) * E]) / E)
            d2.append(sum(distinct_n(block)) / len(block))
            examples.append(block[0])
        acc = [sum(per[e][i] for e in emotions) / E for i in range(len(grid))]
        curves[name] = DamageCurve(grid, acc, kl, d2, per, examples)
    return MatchedDamage(curves, base, n)
