"""Causal re-measurement: the reference against itself is a perfect match, a damaged copy is
not, and the head effects are the sweep engine's exact single-head ablations."""
import math

import torch

from emofast.data import Example
from emofast.discovery.features import label_metric
from emofast.eval.recognition import recognition_prompt
from emofast.quant import quantize
from emofast.quant.causal import causal_change, causal_reference
from emofast.sweeps import Edit, sweep

from conftest import make_tiny
from oracles import loud, random_sae

LABELS = ("anger", "happiness", "fear", "disgust")
EXAMPLES = [Example(t, lab) for t, lab in [("so unfair", "anger"), ("how rude", "anger"),
                                            ("what joy", "happiness"), ("lovely", "happiness"),
                                            ("eek a spider", "fear"), ("yuck", "disgust")]]


def test_the_reference_against_itself_and_against_damage():
    model = loud(make_tiny("llama"), seed=2)
    saes = [random_sae(model, "L1.resid_post", "topk", seed=3)]
    ref = causal_reference(model, saes, EXAMPLES, labels=LABELS, n_candidates=3)
    assert set(ref.prompts) == set(LABELS)
    assert len(ref.heads["anger"]) == model.n_layers * model.n_heads
    assert not math.isnan(ref.reliability["anger"]["heads_tau_halves"])     # 2 prompts
    assert math.isnan(ref.reliability["fear"]["heads_tau_halves"])          # 1 prompt
    # the head effects are single-head zero ablations at the last position
    prompts = [recognition_prompt(model, e.text) for e in EXAMPLES if e.label == "anger"]
    res = sweep(model, prompts, [[], [Edit(2, "attn_z", [1])]],
                label_metric(model, "anger", LABELS), scope="last", progress=False)
    got = ref.heads["anger"][2 * model.n_heads + 1]
    assert abs(got - float(res.values[1] - res.values[0])) < 1e-5
    same = causal_change(model, ref)["mean"]
    assert same["heads_kendall_tau"] > 0.999 and same["heads_jaccard10"] == 1.0
    assert same["features_retained"] == 1.0 or math.isnan(same["features_retained"])
    bad = causal_change(quantize(model, "rtn:2:8", layers=[0, 1]), ref)["mean"]
    assert bad["heads_kendall_tau"] < 0.999
