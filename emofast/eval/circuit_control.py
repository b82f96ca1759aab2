"""Circuit modulation vs residual steering vs prompting, judged on held-out sev6 prompts, at the
damage each does to the language model.

    cmp = compare_control(model, judge, dirs, diffs, circuits, val_prompts, test_skeletons,
                          steering_configs(QUICK_GRID, model.n_layers), alphas=(1.5, 2.5, 4.0),
                          neutral=neutral_sentences(24))
    cmp.modulation["fear"].accuracy, cmp.steering.per_emotion["fear"].steered

Both interventions are tuned on the same validation prompts (train skeletons) by the same score
(`control.judged_grid`): the modulation alpha per emotion, the steering (layer window, alpha)
per emotion (`control.select_steering`). Then unsteered, prompted, steered and modulated replies
to the held-out prompts are judged, with distinct-2 and LM preservation (perplexity, next-token
KL on neutral sentences) beside each.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch

from ..analysis.directions import EmotionDirections
from ..analysis.units import UnitDifferences
from ..data import EMOTIONS6, Prompt, Skeleton, sev_prompts
from ..interventions import Circuit, Modulation, generate
from ..models import Model
from .control import (Config, SteeringChoice, SteeringComparison, compare_steering, judged_grid,
                      select_steering, steering_preservation)
from .judge import EmotionJudge
from .preservation import PreservationResult, distinct_n, lm_preservation

CONDITIONS = ("modulation", "steering", "prompting", "unsteered")


class EmotionModulation(NamedTuple):
    alpha: float                # chosen on the validation prompts
    accuracy: float             # judge accuracy on the held-out prompts
    distinct2: float
    example: str                # the first modulated reply


class ControlComparison(NamedTuple):
    steering_choice: SteeringChoice
    steering: SteeringComparison
    modulation_score: torch.Tensor          # [E, alphas] judge P(target) x fluent, validation
    alphas: list[float]                     # the modulation alphas tried
    modulation: dict[str, EmotionModulation]
    modulation_cost: dict[str, PreservationResult]
    steering_cost: dict[str, PreservationResult]

    def overall(self) -> dict[str, float]:
        """Condition -> judge accuracy averaged over emotions."""
        rows = self.table()
        return {c: sum(r[c] for r in rows.values()) / len(rows) for c in CONDITIONS}

    def table(self) -> dict[str, dict]:
        """Per emotion, the report's row (the format of report.json's control.per_emotion)."""
        out = {}
        for e, m in self.modulation.items():
            st = self.steering.per_emotion[e]
            out[e] = {"modulation": m.accuracy, "steering": st.steered, "prompting": st.prompted,
                      "unsteered": st.unsteered, "modulation_distinct2": m.distinct2,
                      "steering_distinct2": st.steered_distinct2, "modulation_alpha": m.alpha,
                      "steering_layers": st.layers, "steering_alpha": st.alpha,
                      "modulation_example": m.example, "steering_example": st.example}
        return out

    def to_json(self) -> dict:
        return {"per_emotion": self.table(), "overall": self.overall(),
                "preservation": {
                    "modulation": {e: r._asdict() for e, r in self.modulation_cost.items()},
                    "steering": {e: r._asdict() for e, r in self.steering_cost.items()}},
                "modulation_grid": {"alphas": self.alphas, "emotions": list(self.modulation),
                                    "p_target_fluent": self.modulation_score.tolist()},
                "steering_grid": self.steering_choice.to_json(),
                "n_test_prompts": self.steering.n_test_prompts}


def compare_control(model: Model, judge: EmotionJudge, directions: EmotionDirections,
                    differences: UnitDifferences, circuits: Mapping[str, Circuit],
                    val_prompts: Sequence[Prompt], test_skeletons: Sequence[Skeleton],
                    steering_configs: Sequence[Config], *, alphas: Sequence[float],
                    neutral: Sequence[str], max_new_tokens: int = 24,
                    progress: bool = True) -> ControlComparison:
    """See the module docstring; emotions are EMOTIONS6, each with its circuit."""
    if not alphas or 0 in alphas:
        raise ValueError(f"alphas must be non-empty and non-zero, got {alphas}")
    kw = dict(max_new_tokens=max_new_tokens, progress=progress)
    choice = select_steering(model, directions, judge, steering_configs, val_prompts, **kw)
    steering = compare_steering(model, directions, judge, choice.chosen, test_skeletons, **kw)
    rows = [(e, a) for e in EMOTIONS6 for a in alphas for _ in val_prompts]
    texts = generate(model, list(val_prompts) * (len(EMOTIONS6) * len(alphas)),
                     intervention=Modulation.rows(differences, circuits, rows), batch_size=64,
                     **kw)
    score = judged_grid(judge, texts, EMOTIONS6, len(alphas))         # [E, alphas]
    best = {e: alphas[int(score[i].argmax())] for i, e in enumerate(EMOTIONS6)}

    plain = sev_prompts(list(test_skeletons), emotions=None, instructed=False)
    n = len(plain)
    texts = generate(model, plain * len(EMOTIONS6),
                     intervention=Modulation.rows(differences, circuits,
                                                  [(e, best[e]) for e in EMOTIONS6 for _ in plain]),
                     batch_size=64, **kw)
    hits = [p == e for p, e in zip(judge.predict(texts), [e for e in EMOTIONS6 for _ in plain])]
    modulation = {}
    for i, e in enumerate(EMOTIONS6):
        mod = texts[i * n:(i + 1) * n]
        modulation[e] = EmotionModulation(best[e], sum(hits[i * n:(i + 1) * n]) / n,
                                          sum(distinct_n(mod)) / n, mod[0])
    mod_cost = lm_preservation(model, neutral, [Modulation.single(differences, circuits, e, best[e])
                                                for e in EMOTIONS6])
    return ControlComparison(choice, steering, score, list(alphas), modulation,
                             dict(zip(EMOTIONS6, mod_cost)),
                             steering_preservation(model, directions, choice.chosen, neutral))
