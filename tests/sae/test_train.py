"""train_saes: one forward feeds several sites; a run learns (FVU falls, decoder rows unit norm,
b_dec at the data mean); the fused-kernel training step equals a plain-torch step; a run
interrupted and resumed ends with the same SAEs as an uninterrupted one."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.sae import load_sae
from emofast.sae.methods import SiteTrainer
from emofast.sae.train import SAETrainConfig, train_saes
from emofast.validation import Interrupted

DOCS = [("the quick brown fox jumps over the lazy dog " * 3 + str(i)) for i in range(40)]
CFG = SAETrainConfig(sites=("L1.resid_post", "L2.mlp_act"), expansion=4, k=4, epochs=2,
                     batch_tokens=64, buffer_tokens=256, batch_docs=4, max_length=32,
                     warmup_steps=2, dead_tokens=200)


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def model(request):
    return make_tiny(request.param)


def test_learns_two_sites_in_one_run(model, tmp_path):
    res = train_saes(model, DOCS, CFG, out=tmp_path, progress=False)
    assert set(res.saes) == {"L1.resid_post", "L2.mlp_act"}
    first, last = res.history[0], res.history[-1]
    for site in CFG.sites:
        assert last[site]["fvu"] < first[site]["fvu"]
        sae = res.saes[site]
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.d_sae))
        assert sae.d_sae == 4 * sae.d_in and sae.k == 4
        back = load_sae(tmp_path / site, model)
        assert torch.equal(back.W_dec, sae.W_dec)
    doc = json.loads((tmp_path / "train.json").read_text())
    assert doc["tokens"] == res.tokens and len(doc["history"]) == len(res.history)


def test_step_equals_plain_torch(model):
    from emofast.sae import SAE
    torch.manual_seed(0)
    sae = SAE(16, 48, architecture="topk", k=5)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
    plain = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    cfg = SAETrainConfig(auxk_coeff=0.0, lr=1e-2, warmup_steps=1)
    tr = SiteTrainer(sae, cfg, total_steps=10, scale=1.0)
    x = torch.randn(32, 16)
    tr.step(x)
    # the same step written out: topk of the pre-activations, FVU, projected gradient, Adam
    pre = (x - plain["b_dec"]) @ plain["W_enc"] + plain["b_enc"]
    top = pre.topk(5, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    x_hat = acts @ plain["W_dec"] + plain["b_dec"]
    loss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        w = plain["W_dec"]
        w.grad -= (w.grad * w).sum(-1, keepdim=True) * w
    opt = torch.optim.Adam(plain.values(), lr=1e-2)
    opt.step()
    with torch.no_grad():
        w /= w.norm(dim=-1, keepdim=True)
    for n, p in sae.named_parameters():
        torch.testing.assert_close(p, plain[n], atol=1e-5, rtol=1e-5)


def test_resume_equals_uninterrupted(model, tmp_path, monkeypatch):
    whole = train_saes(model, DOCS, CFG, progress=False)
    import emofast.sae.train as train_mod
    real, calls = train_mod._checkpoint, []

    def checkpoint_then_stop(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(Interrupted, match="SAE training interrupted after"):
        train_saes(model, DOCS, CFG, out=tmp_path, progress=False)
    monkeypatch.setattr(train_mod, "_checkpoint", real)
    res = train_saes(model, DOCS, CFG, out=tmp_path, progress=False)
    assert res.resumed_from > 0 and res.tokens == whole.tokens
    for site in CFG.sites:
        for n, p in whole.saes[site].named_parameters():
            torch.testing.assert_close(getattr(res.saes[site], n), p, atol=0, rtol=0)
    assert len(list((tmp_path / "parts").glob("*.safetensors"))) == 1  # the latest only


def test_bad_config():
    with pytest.raises(ValueError, match="buffer_tokens must be >= batch_tokens"):
        SAETrainConfig(batch_tokens=100, buffer_tokens=10)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        SAETrainConfig(k=0)
    with pytest.raises(ValueError, match="layer 9 out of range"):
        train_saes(make_tiny("llama"), DOCS, SAETrainConfig(sites=("L9.resid_post",)),
                   progress=False)


@pytest.mark.parametrize("dead_ids", [[1, 5, 9], list(range(2, 30))],
                         ids=["few-dense", "many-sparse-kernels"])
def test_auxk_equals_hand_formula(dead_ids):
    from emofast.sae import SAE
    from emofast.sae.methods import _auxk
    torch.manual_seed(2)
    sae = SAE(8, 32, architecture="topk", k=3)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape))
    x, e = torch.randn(10, 8), torch.randn(10, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[dead_ids] = True
    k_aux = min(4, len(dead_ids))                # d_in / 2 = 4; scale = k_aux / 4
    total_var = torch.tensor(7.0)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    pre = pre.masked_fill(~dead, float("-inf"))
    top = pre.topk(k_aux, dim=-1)
    codes = torch.zeros(10, 32).scatter(1, top.indices, top.values.relu())
    want = k_aux / 4 * (codes @ sae.W_dec - e).pow(2).sum() / total_var
    got = _auxk(sae, x, e, dead, total_var)
    torch.testing.assert_close(got, want)
    got.backward()                                # and it differentiates (both paths)
    assert sae.W_enc.grad[:, dead_ids].abs().sum() > 0 and sae.W_dec.grad[dead_ids].abs().sum() > 0


def test_default_sites_spread_to_the_last_layer():
    from emofast.sae.train import default_sites
    assert default_sites(30) == ("L5.resid_post", "L10.resid_post", "L15.resid_post",
                                 "L19.resid_post", "L24.resid_post", "L29.resid_post")
    assert default_sites(3) == ("L0.resid_post", "L1.resid_post", "L2.resid_post")
    model = make_tiny("llama")
    cfg = SAETrainConfig(expansion=2, k=2, batch_tokens=64, buffer_tokens=128, max_length=32)
    res = train_saes(model, DOCS[:10], cfg, progress=False)
    assert tuple(res.saes) == default_sites(model.n_layers)


def test_activation_cache_gives_the_same_saes_without_the_model(model, tmp_path, monkeypatch):
    plain = train_saes(model, DOCS, CFG, activations=None, progress=False)
    cached = train_saes(model, DOCS, CFG, activations=tmp_path / "acts", progress=False)
    shards = sorted((tmp_path / "acts" / "parts").glob("fill-*.safetensors"))
    assert shards                                   # written by the first epoch, read after
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    again = train_saes(model, DOCS, CFG, activations=tmp_path / "acts", progress=False)
    for site in CFG.sites:
        for res in (cached, again):
            for name, p in plain.saes[site].named_parameters():
                assert torch.equal(p, dict(res.saes[site].named_parameters())[name]), name


def test_fills_equal_the_hf_hidden_states(model):
    """The buffer's activations (read by hooks, the forward stopped after the deepest site, short
    windows run together) are the HF model's own hidden states at the kept positions."""
    from emofast.sae.buffer import _forward_fill, token_windows
    from emofast.sae.evaluate import evaluated_positions
    windows = token_windows(model, DOCS[:6] + ["a b", "short one here"], 32, seed=1)
    acts, end = _forward_fill(model, windows, 0, ["L0.resid_post", "L1.resid_post"], 2, 10 ** 6)
    assert end == len(windows)
    want = {0: [], 1: []}
    for w in sorted(windows, key=len):
        ids, mask = torch.tensor([w]), torch.ones(1, len(w), dtype=torch.long)
        with torch.no_grad():
            hs = model.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        keep = evaluated_positions(model, ids, mask)
        for layer in want:
            want[layer].append(hs.hidden_states[layer + 1][keep])
    for layer in want:
        torch.testing.assert_close(acts[f"L{layer}.resid_post"], torch.cat(want[layer]),
                                   atol=1e-5, rtol=1e-5)


def test_every_method_trains_end_to_end(model, tmp_path):
    for method in ("batchtopk", "standard", "jumprelu"):
        cfg = SAETrainConfig(sites=("L1.resid_post",), method=method, expansion=2, k=4,
                             epochs=1, batch_tokens=64, buffer_tokens=256, max_length=32)
        res = train_saes(model, DOCS, cfg, out=tmp_path / method, progress=False)
        back = load_sae(tmp_path / method / "L1.resid_post", model)
        assert back.architecture == {"batchtopk": "jumprelu"}.get(method, method)
        x = torch.randn(5, back.d_in)
        with torch.no_grad():
            torch.testing.assert_close(back(x), res.saes["L1.resid_post"](x))


def test_fills_without_a_batch(model, tmp_path):
    """A fill smaller than one batch trains nothing and reports nothing; a corpus that never
    fills a batch is one clear error, with or without a checkpoint folder."""
    cfg = SAETrainConfig(sites=("L1.resid_post",), expansion=2, k=4, epochs=1, batch_tokens=200,
                         buffer_tokens=1000, max_length=32)
    res = train_saes(model, DOCS, cfg, progress=False)
    assert res.history and all(row["L1.resid_post"]["fvu"] > 0 for row in res.history)
    tiny = SAETrainConfig(sites=("L1.resid_post",), batch_tokens=64, buffer_tokens=64, epochs=2,
                          checkpoint_every=1)
    for out in (None, tmp_path / "t"):
        with pytest.raises(ValueError, match="the corpus gave no batch"):
            train_saes(model, ["hello there you"], tiny, out=out, progress=False)
