"""FeatureSteering against SAE.hook with a hand-written edit (dense activations, features scaled,
decoded whole): every scope; factor 1 is the model exactly; equal to the sweep's FeatureEdit
scale; a saved folder round-trips; bad input."""
import pytest
import torch

from conftest import make_tiny
from emofast.interventions import FeatureSteering, load_steering
from emofast.sweeps import KL, FeatureEdit, sweep
from oracles import PROMPTS, loud, random_sae


@pytest.fixture(scope="module")
def model():
    return loud(make_tiny("llama"))


def _logits(model, iv, texts=PROMPTS):
    enc = model.encode(texts, padding_side="left")
    with iv.hooks(model):
        return model.forward(enc["input_ids"], enc["attention_mask"]).logits.float()


@pytest.mark.parametrize("arch,norm", [("topk", "none"), ("jumprelu", "layer_norm"),
                                       ("standard", "constant_norm_rescale")])
def test_equals_hand_edit_through_sae_hook(model, arch, norm):
    sae = random_sae(model, "L1.resid_post", arch, norm, seed=5)
    feats = [0, 4, 9, 30]
    st = FeatureSteering({sae: feats}, 3.0)

    def edit(acts):
        d = sae.dense(acts).clone()
        d[..., feats] *= 3.0
        return d
    enc = model.encode(PROMPTS, padding_side="left")
    with sae.hook(model, edit=edit):
        want = model.forward(enc["input_ids"], enc["attention_mask"]).logits.float()
    torch.testing.assert_close(_logits(model, st), want, atol=1e-4, rtol=1e-4)


def test_last_k_scope_and_identity(model):
    sae = random_sae(model, "L0.resid_post", "topk", seed=6)
    enc = model.encode(PROMPTS, padding_side="left")
    clean = model.forward(enc["input_ids"], enc["attention_mask"]).logits.float()
    assert torch.equal(_logits(model, FeatureSteering({sae: [1, 2]}, 1.0)), clean)
    last = _logits(model, FeatureSteering({sae: list(range(48))}, 4.0, scope="last:1"))
    # causal: positions before the last are untouched
    torch.testing.assert_close(last[:, :-1], clean[:, :-1], atol=0, rtol=0)
    assert (last[:, -1] - clean[:, -1]).abs().max() > 1e-3


def test_equals_sweep_feature_edit_scale(model):
    sae = random_sae(model, "L1.resid_post", "topk", seed=7)
    st = FeatureSteering({sae: [3, 5, 8]}, 2.5)
    res = sweep(model, PROMPTS, [[st], [FeatureEdit(sae, [3, 5, 8], "scale", factor=2.5)]],
                KL(), progress=False)
    torch.testing.assert_close(res.per_prompt[0], res.per_prompt[1], atol=1e-5, rtol=0)
    assert res.per_prompt[0].abs().max() > 1e-4


def test_save_load_round_trip(model, tmp_path):
    a = random_sae(model, "L0.resid_post", "topk", seed=8)
    b = random_sae(model, "L1.mlp_act", "standard", "constant_norm_rescale", seed=9)
    st = FeatureSteering({a: [1, 7], b: [2]}, 5.0, scope="last:2", meta={"note": "x"})
    st.save(tmp_path / "s")
    back = load_steering(tmp_path / "s", model)
    assert back.factor == 5.0 and str(back.scope) == "last:2" and back.meta == {"note": "x"}
    assert back.features == [[1, 7], [2]] and [s.site for s in back.saes] == [a.site, b.site]
    torch.testing.assert_close(_logits(model, back), _logits(model, st), atol=1e-5, rtol=0)
    assert back.describe()["sha1"] == st.describe()["sha1"]


def test_bad_input(model, tmp_path):
    sae = random_sae(model, "L0.resid_post", "topk")
    with pytest.raises(ValueError, match="must be a non-empty list in 0..47"):
        FeatureSteering({sae: [48]}, 2.0)
    with pytest.raises(ValueError, match="factor must be a finite number"):
        FeatureSteering({sae: [1]}, float("nan"))
    with pytest.raises(ValueError, match="needs at least one SAE"):
        FeatureSteering({}, 2.0)
    with pytest.raises(FileNotFoundError, match="no steering.json"):
        load_steering(tmp_path)
