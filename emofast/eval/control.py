"""Judged control: choose a steering on validation prompts, then compare it with prompting and
the unsteered model on held-out prompts, and measure what it costs the language model.

    configs = steering_configs(((0.4, 0.57, 1.5),), model.n_layers)   # (layers, alpha) to try
    choice = select_steering(model, dirs, judge, configs, val_prompts)  # per emotion, the best
    table = compare_steering(model, dirs, judge, choice.chosen, test_skeletons)
    table.per_emotion["fear"].steered                                  # judge accuracy
    cost = steering_preservation(model, dirs, choice.chosen, neutral_texts)

Selection scores each (emotion, config) by the judge's mean probability of the target emotion
over the validation replies, counting only fluent replies (distinct bigrams >= FLUENT): a
degenerate "I I I I" reply may still be judged confidently. Everything is greedy, so a run is
reproducible. Nothing here draws: the pipelines plot these results.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..analysis.directions import EmotionDirections
from ..data import EMOTIONS6, Prompt, Skeleton, sev_prompts
from ..interventions import Steering, generate
from ..models import Model
from .judge import EmotionJudge
from .preservation import PreservationResult, distinct_n, lm_preservation

FLUENT = 0.5  # minimum distinct-bigram ratio for a reply to count in selection
Config = tuple[list[int], float]  # (steered layers, alpha)
# (first, last) steered layer as fractions of depth, alpha. Quick: four configs around where
# each emotion peaked on SmolLM2 (emofast.analysis.sev); full: a layer x alpha grid.
QUICK_GRID = ((0.13, 0.3, 1.5), (0.27, 0.43, 1.5), (0.4, 0.57, 1.0), (0.4, 0.57, 1.5))
FULL_GRID = tuple((lo, lo + 0.17, a) for lo in (0.07, 0.13, 0.2, 0.27, 0.33, 0.4, 0.47, 0.53)
                  for a in (0.75, 1.0, 1.5, 2.0))


def steering_configs(grid: Sequence[tuple[float, float, float]], n_layers: int) -> list[Config]:
    """(first, last) layer as fractions of depth, alpha -> (layers, alpha) for this model."""
    out = []
    for lo, hi, alpha in grid:
        a, b = round(lo * n_layers), round(hi * n_layers)
        out.append((list(range(a, max(b, a) + 1)), alpha))
    return out


def config_name(config: Config) -> str:
    layers, alpha = config
    return f"L{layers[0]}-{layers[-1]} a{alpha:g}"


def judged_grid(judge: EmotionJudge, texts: list[str], emotions: Sequence[str],
                n_configs: int) -> torch.Tensor:
    """Selection score [E, n_configs]: mean over prompts of judge P(target) x fluent; `texts`
    are ordered emotion, then config, then prompt."""
    E = len(emotions)
    probs = judge.probs(texts).view(E, n_configs, -1, len(judge.labels))
    fluent = (torch.tensor(distinct_n(texts)) >= FLUENT).view(E, n_configs, -1)
    target = torch.stack([probs[i, ..., judge.labels.index(e)] for i, e in enumerate(emotions)])
    return (target * fluent).mean(-1)


class SteeringChoice(NamedTuple):
    """Each emotion's best config on the validation prompts."""
    configs: list[Config]       # the configs tried
    emotions: list[str]
    score: torch.Tensor         # [E, configs] judge P(target) x fluent
    chosen: dict[str, Config]   # emotion -> its best config

    def to_json(self) -> dict:
        return {"configs": [config_name(c) for c in self.configs], "emotions": self.emotions,
                "p_target_fluent": self.score.tolist()}


def select_steering(model: Model, directions: EmotionDirections, judge: EmotionJudge,
                    configs: Sequence[Config], prompts: Sequence[Prompt], *,
                    emotions: Sequence[str] = EMOTIONS6, max_new_tokens: int = 24,
                    scale: str = "rms", batch_size: int = 64,
                    progress: bool = True) -> SteeringChoice:
    """Steer every validation prompt with every (emotion, config) in one batched generation and
    pick, per emotion, the config with the best selection score."""
    if not configs or not prompts:
        raise ValueError("select_steering needs at least one config and one prompt")
    rows, texts_in = [], []
    for emotion in emotions:
        for layers, alpha in configs:
            rows += [(emotion, layers, alpha)] * len(prompts)
            texts_in += list(prompts)
    texts = generate(model, texts_in, intervention=Steering.rows(directions, rows, model.n_layers,
                                                                 scale=scale),
                     max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    score = judged_grid(judge, texts, emotions, len(configs))             # [E, configs]
    chosen = {e: configs[int(score[i].argmax())] for i, e in enumerate(emotions)}
    return SteeringChoice(list(configs), list(emotions), score, chosen)


class EmotionControl(NamedTuple):
    """Judge accuracy on one emotion's held-out prompts under each condition."""
    unsteered: float
    prompted: float             # "Always reply in {emotion}"
    steered: float              # the chosen steering
    steered_distinct2: float    # mean distinct-bigram ratio of the steered replies
    layers: list[int]           # the chosen steering
    alpha: float
    example: str                # the first steered reply


class SteeringComparison(NamedTuple):
    per_emotion: dict[str, EmotionControl]
    overall: dict[str, float]   # condition -> mean over emotions
    unsteered_distinct2: float
    n_test_prompts: int
    unsteered_examples: list[str]

    def to_json(self) -> dict:
        return {"fluent_threshold": FLUENT, "unsteered_distinct2": self.unsteered_distinct2,
                "per_emotion": {e: c._asdict() for e, c in self.per_emotion.items()},
                "overall": self.overall, "n_test_prompts": self.n_test_prompts,
                "unsteered_examples": self.unsteered_examples}


def compare_steering(model: Model, directions: EmotionDirections, judge: EmotionJudge,
                     chosen: dict[str, Config], skeletons: Sequence[Skeleton], *,
                     max_new_tokens: int = 24, scale: str = "rms", batch_size: int = 64,
                     progress: bool = True) -> SteeringComparison:
    """Unsteered, prompted and steered (each emotion's chosen config) replies to the held-out
    skeletons' prompts, judged; one batched generation for all of them."""
    emotions = list(chosen)
    plain = sev_prompts(list(skeletons), emotions=None, instructed=False)
    instructed = sev_prompts(list(skeletons), emotions=tuple(emotions))
    n = len(plain)
    rows = [(None, [], 0.0)] * (n + len(instructed)) + [(e, *chosen[e]) for e in emotions
                                                        for _ in plain]
    replies = generate(model, plain + instructed + plain * len(emotions),
                       intervention=Steering.rows(directions, rows, model.n_layers, scale=scale),
                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    unsteered, prompted, steered = replies[:n], replies[n:n + len(instructed)], \
        replies[n + len(instructed):]
    pred_un = judge.predict(unsteered)
    table = {}
    for i, e in enumerate(emotions):
        pr = [r for r, p in zip(prompted, instructed) if p.emotion == e]
        st = steered[i * n:(i + 1) * n]
        table[e] = EmotionControl(sum(p == e for p in pred_un) / n,
                                  judge.score(pr, [e] * len(pr)).accuracy,
                                  judge.score(st, [e] * n).accuracy, sum(distinct_n(st)) / n,
                                  chosen[e][0], chosen[e][1], st[0])
    overall = {c: sum(getattr(table[e], c) for e in emotions) / len(emotions)
               for c in ("unsteered", "prompted", "steered")}
    return SteeringComparison(table, overall, sum(distinct_n(unsteered)) / n, n, unsteered[:3])


def steering_preservation(model: Model, directions: EmotionDirections, chosen: dict[str, Config],
                          texts: Sequence[str], *, scale: str = "rms"
                          ) -> dict[str, PreservationResult]:
    """Perplexity and next-token KL on `texts` (e.g. neutral sentences) under each emotion's
    chosen steering."""
    results = lm_preservation(model, texts, [
        Steering.single(directions, e, layers, alpha, model.n_layers, scale=scale)
        for e, (layers, alpha) in chosen.items()])
    return dict(zip(chosen, results))
