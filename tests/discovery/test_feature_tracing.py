"""Feature attribution against central differences of the exact sweep (FeatureEdit scale
1 +- eps); the tracing's bookkeeping (phases, curves, k80); the steering choice within its KL
budget and its matched random control."""
import pytest
import torch

from conftest import make_tiny
from emofast.data import Example
from emofast.discovery.feature_steering import (choose_feature_steering, emotion_attributions,
                                               matched_random)
from emofast.discovery.features import depth_phases, feature_attribution, trace_features
from emofast.sweeps import FeatureEdit, LogitDiff, sweep
from oracles import PROMPTS, loud, random_sae

LABELS = ("anger", "happiness", "fear", "disgust")   # first letters differ (byte tokenizer)
TRAIN = [Example(t, lab) for t, lab in [
    ("I could scream at them.", "anger"), ("They lied again!", "anger"),
    ("What a lovely day.", "happiness"), ("We won the cup!", "happiness"),
    ("Something moves in the dark.", "fear"), ("The ice cracked under me.", "fear"),
    ("The bin smelled rotten.", "disgust"), ("Maggots in the bread.", "disgust")]]


@pytest.fixture(scope="module")
def model():
    return loud(make_tiny("llama"), seed=3)


def test_attribution_equals_central_differences(model):
    saes = [random_sae(model, "L0.resid_post", "topk", seed=1),
            random_sae(model, "L1.mlp_act", "standard", "constant_norm_rescale", seed=2)]
    metric = LogitDiff([65, 66], [67])
    attr = feature_attribution(model, saes, PROMPTS, metric, batch_size=2)
    eps = 1e-2
    for sae in saes:
        top = attr.estimate[sae.site].abs().topk(5).indices.tolist()
        res = sweep(model, PROMPTS, [[FeatureEdit(sae, [f], "scale", factor=1 + s * eps)]
                                     for f in top for s in (1, -1)], metric, progress=False)
        deriv = (res.values[0::2] - res.values[1::2]) / (2 * eps)        # d m / d factor
        torch.testing.assert_close(attr.estimate[sae.site][top], -deriv, rtol=2e-2, atol=1e-3)
        assert ((attr.firing[sae.site] >= 0) & (attr.firing[sae.site] <= 1)).all()
        # first real token of each prompt, by hand (one unpadded forward each)
        seen, count = [], torch.zeros(sae.d_sae)

        def read(act, site):
            seen.append(act.detach())
        with model.hooks({sae.site: read}):
            for p in PROMPTS:
                ids = model.tokenizer(p, return_tensors="pt")["input_ids"]
                model.forward(ids, torch.ones_like(ids))
                count += (sae.dense(sae.encode(seen[-1][0, :1]))[0] > 0).float()
        torch.testing.assert_close(attr.first_firing[sae.site], count / len(PROMPTS))


def test_trace_bookkeeping(model):
    saes = [random_sae(model, "L0.resid_post", "topk", seed=1),
            random_sae(model, "L1.resid_post", "jumprelu", seed=4)]
    assert depth_phases(saes, 3) == {"early": ["L0.resid_post"], "middle": ["L1.resid_post"]}
    trace = trace_features(model, saes, TRAIN, labels=LABELS, n_candidates=3, progress=False)
    assert set(trace.per_emotion) == set(LABELS)
    for t in trace.per_emotion.values():
        assert len(t.candidates) == 6 and len(t.exact) == 6
        for name, p in t.phases.items():
            site = p.sites[0]
            mine = [e for (s, _), e in zip(t.candidates, t.exact.tolist()) if s == site]
            assert len(p.candidates) == sum(e < 0 for e in mine)      # the supporting ones
            assert p.n_opposing == sum(e >= 0 for e in mine)
            assert p.exact == sorted(p.exact) and all(e < 0 for e in p.exact)
            if p.candidates:
                assert p.curve_k[-1] == len(p.candidates)
            if p.k80 is not None:
                k = p.curve_k.index(p.k80)
                assert p.curve[k] <= 0.8 * p.all_effect
                assert all(c > 0.8 * p.all_effect for c in p.curve[:k])
        assert isinstance(t.to_json()["spearman"], float)


def test_choice_within_budget_and_random_control(model):
    saes = [random_sae(model, "L1.resid_post", "topk", seed=4)]
    choice = choose_feature_steering(model, saes, TRAIN, ["hello world", "a plain text"],
                                     labels=LABELS, per_emotion=(1, 2), factors=(2.0, 4.0),
                                     kl_budget=10.0, require_gain=False, progress=False)
    assert len(choice.candidates) == 4
    assert choice.chosen is not None and choice.chosen.kl_neutral <= 10.0
    best = max(c.train_accuracy for c in choice.candidates if c.kl_neutral <= 10.0)
    assert choice.chosen.train_accuracy == best
    attrs = emotion_attributions(model, saes, TRAIN, LABELS)
    for sae, feats in zip(choice.steering.saes, choice.steering.features):
        for a in attrs.values():     # attention-sink features are never steered
            assert (a.first_firing[sae.site][feats] == 0).all()
    ctrl = matched_random(choice.steering, choice.firing, sink=choice.sink, seed=1)
    assert ctrl.factor == choice.steering.factor
    assert [len(f) for f in ctrl.features] == [len(f) for f in choice.steering.features]
    assert not set(ctrl.features[0]) & set(choice.steering.features[0])
    site = choice.steering.saes[0].site        # drawn from live, non-sink features only
    assert (choice.firing[site][ctrl.features[0]] > 0).all()
    assert not choice.sink[site][ctrl.features[0]].any()
    none = choose_feature_steering(model, saes, TRAIN, ["hello world"], labels=LABELS,
                                   per_emotion=(1,), factors=(50.0,), kl_budget=0.0,
                                   progress=False)
    assert none.steering is None and none.chosen is None
    gain = choose_feature_steering(model, saes, TRAIN, ["hello world"], labels=LABELS,
                                   per_emotion=(1, 2), factors=(2.0, 4.0), kl_budget=10.0,
                                   attributions=attrs, progress=False)
    assert gain.chosen is None or gain.chosen.train_accuracy > gain.unsteered_train_accuracy


def test_specificity_by_hand():
    from emofast.discovery.feature_steering import specificity
    from emofast.discovery.features import FeatureAttribution
    per = torch.tensor([[1.0, 0.0], [3.0, 2.0], [-1.0, 4.0]])        # [texts, features] estimates
    a = FeatureAttribution({"s": per.mean(0)}, {"s": torch.zeros(2)}, 0.0, None, {"s": per})
    score = specificity({"anger": a}, ["anger", "anger", "fear"])["anger"]["s"]
    # gains = -estimates: anger texts mean (-2, -1), the fear text (1, -4)
    torch.testing.assert_close(score, torch.tensor([-3.0, 3.0]))
