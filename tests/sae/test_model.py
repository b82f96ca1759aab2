"""The SAE module against SAELens's formulas written out in torch, and spliced into a model:
with no edit the forward is the model's own, bit for bit; edits and bare reconstructions equal a
hand-spliced oracle."""
import pytest
import torch

from conftest import make_tiny
from emofast.kernels import EncoderOutput
from emofast.sae import SAE


def random_sae(d_in, d_sae, architecture, norm="none", b_dec_in=True, k=None, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, architecture=architecture, k=k, apply_b_dec_to_input=b_dec_in,
              normalize_activations=norm, **kw)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.4 - 0.1)  # some negative
    return sae


def by_hand(sae, x):
    """SAELens's inference forward, written out (no kernels)."""
    undo = None
    if sae.normalize_activations == "constant_norm_rescale":
        undo = sae.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
        x = x * undo
    elif sae.normalize_activations == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        x, undo = (x - mu) / (std + 1e-5), (mu, std)
    pre = (x - sae.b_dec * sae.apply_b_dec_to_input) @ sae.W_enc + sae.b_enc
    if sae.architecture == "standard":
        acts = pre.relu()
    elif sae.architecture == "jumprelu":
        acts = pre.relu() * (pre > sae.threshold)
    else:
        top = pre.topk(sae.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    out = acts @ sae.W_dec + sae.b_dec
    if sae.normalize_activations == "constant_norm_rescale":
        out = out / undo
    elif sae.normalize_activations == "layer_norm":
        out = out * undo[1] + undo[0]
    return acts, out


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("norm", ["none", "expected_average_only_in", "constant_norm_rescale",
                                  "layer_norm"])
@pytest.mark.parametrize("b_dec_in", [True, False])
def test_equals_saelens_formulas(architecture, norm, b_dec_in):
    torch.manual_seed(1)
    d_in, d_sae = 12, 40
    k = 5 if architecture == "topk" else None
    sae = random_sae(d_in, d_sae, architecture, norm, b_dec_in, k=k)
    x = torch.randn(3, 7, d_in)
    with torch.no_grad():
        acts_want, out_want = by_hand(sae, x)
        torch.testing.assert_close(sae(x), out_want, atol=1e-5, rtol=1e-5)
        acts = sae.encode(x)
        if architecture == "topk":
            assert isinstance(acts, EncoderOutput) and acts.values.shape == (3, 7, k)
            dense = torch.zeros(3, 7, d_sae).scatter(-1, acts.indices, acts.values)
        else:
            dense = acts
            top = sae.encode(x, sparse=True, k=4)
            torch.testing.assert_close(top.values, acts_want.topk(4, dim=-1).values, atol=1e-5,
                                       rtol=1e-5)
        torch.testing.assert_close(dense, acts_want, atol=1e-5, rtol=1e-5)


@pytest.fixture
def model():
    return make_tiny("llama")


def _logits(model, texts=("hello there", "abc")):
    enc = model.encode(list(texts), padding_side="left")
    return model.forward(enc["input_ids"], enc["attention_mask"]).logits


@pytest.mark.parametrize("site, arch", [("L1.resid_post", "topk"), ("L1.mlp_act", "standard"),
                                        ("L2.attn_z", "jumprelu")])
def test_spliced_without_edit_is_the_model_exactly(model, site, arch):
    width = {"resid_post": model.d_model, "mlp_act": model.d_mlp,
             "attn_z": model.n_heads * model.d_head}[site.split(".")[1]]
    sae = random_sae(width, 3 * width, arch, k=8 if arch == "topk" else None, site=site)
    with torch.no_grad():
        clean = _logits(model)
        with sae.hook(model):
            assert torch.equal(_logits(model), clean)
        with sae.hook(model, edit=lambda acts: acts):  # an edit that changes nothing
            assert torch.equal(_logits(model), clean)


def _hand_splice(model, sae, replace):
    """Logits with the site's activation x replaced by replace(x [.., d_in]) by a plain hook."""
    def fn(act, site):
        flat = act.flatten(-2) if site.kind == "attn_z" else act
        return replace(flat).view_as(act)
    with model.hooks({sae.site: fn}):
        return _logits(model)


@pytest.mark.parametrize("site", ["L1.resid_post", "L0.attn_z"])
def test_edit_and_bare_reconstruction_equal_hand_splice(model, site):
    width = model.n_heads * model.d_head if "attn_z" in site else model.d_model
    sae = random_sae(width, 64, "standard", site=site)
    feature = 7

    def edit(acts):
        return acts.index_fill(-1, torch.tensor([feature]), 0.0)

    def hand_edit(x):
        acts, out = by_hand(sae, x)
        return x + (acts.index_fill(-1, torch.tensor([feature]), 0.0) @ sae.W_dec + sae.b_dec
                    - out)
    with torch.no_grad():
        with sae.hook(model, edit=edit):
            got = _logits(model)
        torch.testing.assert_close(got, _hand_splice(model, sae, hand_edit), atol=1e-5, rtol=1e-5)
        with sae.hook(model, error=False):
            bare = _logits(model)
        torch.testing.assert_close(bare, _hand_splice(model, sae, lambda x: by_hand(sae, x)[1]),
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, _logits(model))  # the edit did something


@pytest.mark.parametrize("kw, error, match", [
    (dict(architecture="gated"), ValueError, "unknown SAE architecture 'gated'"),
    (dict(architecture="topk"), TypeError, "k \\(topk\\) must be an integer"),
    (dict(architecture="topk", k=99), ValueError, "k 99 is more than d_sae 40"),
    (dict(architecture="standard", k=4), ValueError, "k is for topk SAEs"),
    (dict(normalize_activations="unit"), ValueError, "unknown normalize_activations"),
    (dict(architecture="standard", site="L1.nowhere"), ValueError, "unknown site kind"),
])
def test_bad_configs(kw, error, match):
    with pytest.raises(error, match=match):
        SAE(12, 40, **kw)


def test_width_must_match_the_models_site(model):
    sae = SAE(model.d_model + 1, 40, architecture="standard", site="L1.resid_post")
    with pytest.raises(ValueError, match="reads 33 features but L1.resid_post of this model has 32"):
        with sae.hook(model):
            pass


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_decode_undoes_the_last_encodes_normalisation(norm):
    """SAELens's decode(encode(x)) is the reconstruction: decode uses the last encode's stats."""
    sae = random_sae(12, 40, "standard", norm=norm)
    x = torch.randn(6, 12) * 3 + 1
    with torch.no_grad():
        with pytest.raises(ValueError, match="call encode first"):
            sae.decode(torch.zeros(6, 40))
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x))
