"""Arm passes against plain HF forwards (prefix reuse equals a full recompute and skips the
prefix), and a whole profile measurement on a tiny model with random SAEs."""
import torch

from emofast.quant import quant_info, quantize
from emofast.quant.arms import Arm, standard_arms, thirds
from emofast.quant.passes import arm_pass, reference_pass
from emofast.quant.profile import EMOTION_METRICS, measure, prepare
from emofast.data import Example

from conftest import make_tiny
from oracles import PROMPTS, random_sae

SITES = ["L1.mlp_out", "L2.resid_post"]


def oracle(ref_model, q, texts):
    """Per text alone (no padding): resid_post at every layer and KL(ref || q) per token."""
    resid, kl = [], []
    for t in texts:
        enc = q.encode([t])
        caught = {}
        with q.hooks([(f"L{l}.resid_post", lambda a, s: caught.__setitem__(s.layer, a[0]))
                      for l in range(q.n_layers)]):
            lq = q.forward(enc["input_ids"], enc["attention_mask"]).logits[0].log_softmax(-1)
        lr = ref_model.forward(enc["input_ids"], enc["attention_mask"]).logits[0].log_softmax(-1)
        resid.append(torch.stack([caught[l] for l in range(q.n_layers)]))
        kl.append((lr.exp() * (lr - lq)).sum(-1))
    return torch.cat(resid, 1), torch.cat(kl).clamp(min=0)


def test_prefix_reuse_equals_plain_forwards_and_skips_the_prefix():
    model = make_tiny("llama")
    q = quantize(model, "rtn:2:8", layers=[2])
    assert quant_info(q).first_layer == 2
    ref = reference_pass(model, PROMPTS, SITES, batch_size=2, progress=False)
    calls = []
    handle = q.adapter.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    arm = arm_pass(q, ref, progress=False)
    handle.remove()
    assert not calls                                    # layers 0, 1 never ran
    want_resid, want_kl = oracle(model, q, PROMPTS)
    torch.testing.assert_close(arm.resid, want_resid, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(arm.kl, want_kl, rtol=1e-3, atol=1e-6)
    # the same arm recomputed from layer 0 agrees
    q.hf.emofast_quantization = {**q.hf.emofast_quantization, "first_layer": 0}
    full = arm_pass(q, ref, progress=False)
    torch.testing.assert_close(full.resid, arm.resid, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full.sites["L1.mlp_out"], arm.sites["L1.mlp_out"])
    torch.testing.assert_close(full.kl, arm.kl, rtol=1e-3, atol=1e-6)
    assert torch.equal(full.same_top, arm.same_top)


def _examples():
    texts = ["i am so happy today", "what a wonderful gift", "this is great news",
             "we won the game", "i am sad and alone", "she cried all night",
             "the loss hurt us", "a gloomy grey morning"]
    return [Example(t, "happiness" if i < 4 else "sadness") for i, t in enumerate(texts)]


def test_measure_on_a_tiny_model_an_identity_arm_and_a_damaging_one():
    base = make_tiny("llama")
    model = quantize(base, "q8_0", modules="attn")   # now Q8_0 values: q8_0 again = identity
    saes = [random_sae(model, "L1.resid_post", "topk", seed=1),
            random_sae(model, "L2.resid_post", "standard", seed=2)]
    data = prepare(model, PROMPTS, _examples(), saes, per_emotion=2, min_active=1,
                   progress=False)
    same = measure(quantize(model, "q8_0", modules="attn"), data,
                   Arm("same", "null_check", "q8_0", None, ("attn",)))
    assert same.metrics["kl_general"] < 1e-10 and same.metrics["direction_cosine"] > 1 - 1e-5
    assert same.metrics["feature_survival_all"] == 1.0
    assert same.metrics["probe_frozen"] == same.metrics["probe_refit"]
    assert max(same.drift["rel_l2"]) < 1e-5
    bad = measure(quantize(model, "rtn:2:8", layers=[0]), data,
                  Arm("early", "region", "rtn:2:8:asym", (0,), region="early", bits=2))
    assert bad.metrics["kl_general"] > 1e-6 and bad.drift["rel_l2"][0] > 0
    for m in EMOTION_METRICS:
        assert len(bad.halves[m]) == 2
    assert set(bad.to_json()) >= {"arm", "general", "emotion", "drift", "survival", "metrics"}


def test_standard_arms_cover_the_design():
    arms = standard_arms(30, bits=(2, 3, 4), headline=3, n_random=20, singles=[0, 29])
    kinds = {a.kind for a in arms}
    assert kinds == {"null_check", "region", "noise", "window", "single", "module", "whole",
                     "random"}
    assert thirds(30) == {"early": tuple(range(10)), "middle": tuple(range(10, 20)),
                          "late": tuple(range(20, 30))}
    rand = [a for a in arms if a.kind == "random"]
    assert len(rand) == 20 and all(len(a.layers) == 10 for a in rand)
    assert len({a.layers for a in rand}) == 20 and not {a.layers for a in rand} & set(
        thirds(30).values())
    assert len([a for a in arms if a.kind == "region"]) == 9
    assert [a.layers for a in arms if a.kind == "window"][0] == tuple(range(5))
