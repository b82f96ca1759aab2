"""Controls at matched damage on a tiny model with a stand-in judge: each (strength, emotion)
accuracy equals judging a separate single-row generation by hand, KL equals lm_preservation of
that one control, and the at-budget rule picks the best accuracy within the budget."""
from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny
from emofast.analysis import EmotionDirections
from emofast.data import EMOTIONS6, load_skeletons, sev_prompts
from emofast.eval.matched_damage import DamageCurve, MatchedDamage, matched_damage
from emofast.eval.preservation import lm_preservation
from emofast.interventions import Steering, generate


class LengthJudge:
    """Labels a text by its length: deterministic, and sensitive to any change of a reply."""
    labels = EMOTIONS6

    def predict(self, texts):
        return [EMOTIONS6[len(t) % 6] for t in texts]

    def score(self, texts, targets):
        hits = [p == t for p, t in zip(self.predict(texts), targets)]
        return SimpleNamespace(accuracy=sum(hits) / len(hits))


def test_curves_equal_separate_runs():
    model = make_tiny("llama")
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 6, model.d_model, generator=g)
    dirs = EmotionDirections(v / v.norm(dim=-1, keepdim=True), list(EMOTIONS6), [1])
    rows_of = lambda rows: Steering.rows(dirs, [(e, [1], a) for e, a in rows],   # noqa: E731
                                         model.n_layers, scale="rms")
    skeletons = load_skeletons("sev6", split="test")[:1]
    neutral = ["hello there", "a plain sentence"]
    md = matched_damage(model, LengthJudge(), {"steer": rows_of}, {"steer": [0.5, 4.0]},
                        skeletons, neutral, max_new_tokens=4, progress=False)
    prompts = sev_prompts(skeletons, emotions=None, instructed=False)
    c = md.curves["steer"]
    for i, a in enumerate([0.5, 4.0]):
        kls = []
        for e in EMOTIONS6:
            iv = rows_of([(e, a)])
            replies = generate(model, prompts, intervention=iv, max_new_tokens=4,
                               progress=False)
            assert c.per_emotion[e][i] == LengthJudge().score(replies, [e] * len(replies)).accuracy
            kls.append(lm_preservation(model, neutral, [iv])[0].kl_mean)
        assert c.kl[i] == pytest.approx(sum(kls) / 6, rel=1e-4, abs=1e-6)
        assert c.accuracy[i] == pytest.approx(sum(c.per_emotion[e][i] for e in EMOTIONS6) / 6)
    assert c.kl[1] > c.kl[0] > 0


def test_at_budget_rule_and_errors():
    curve = DamageCurve([1, 2, 3], [0.2, 0.6, 0.9], [0.05, 0.25, 2.0], [1, 1, 1], {}, [])
    md = MatchedDamage({"m": curve}, 0.1, 3)
    assert md.at(0.1) == {"m": 0.2} and md.at(0.3) == {"m": 0.6} and md.at(0.01) == {"m": None}
    assert md.to_json()["at_kl"]["1.0"] == {"m": 0.6}
    with pytest.raises(ValueError, match="same non-empty set"):
        matched_damage(make_tiny("llama"), LengthJudge(), {"a": None}, {"b": [1]}, [], [])
