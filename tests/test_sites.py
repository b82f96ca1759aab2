"""Sites and hooks on tiny random models of every family, against HF's own outputs."""
import pytest
import torch

from emofast.sites import parse_layers, parse_site

TEXTS = ["Thank you so much for the help!", "The bus leaves at nine.", "I am furious about it."]


def _grab(store, key):
    """A read hook: stores a copy and returns None (no edit)."""
    def fn(act, site):
        store[key] = act.clone()
    return fn


def _run(model, texts=TEXTS, **kw):
    enc = model.encode(texts)
    return enc, model.forward(enc["input_ids"], enc["attention_mask"], **kw)


def test_parse_site_and_layers():
    assert parse_site("L12.mlp_act") == (12, "mlp_act")
    assert str(parse_site(" L0.resid_pre ")) == "L0.resid_pre"
    with pytest.raises(ValueError, match=r"layer 40 out of range: model has 30 layers \(0..29\)"):
        parse_site("L40.mlp_act", n_layers=30)
    with pytest.raises(ValueError, match="unknown site kind 'mlp'"):
        parse_site("L1.mlp")
    with pytest.raises(ValueError, match="expected 'L<layer>.<kind>'"):
        parse_site("layer1.mlp_act")
    assert parse_layers("0,2-4", 30) == [0, 2, 3, 4]
    assert parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("28-30", 30)


def test_resid_sites_equal_hidden_states(tiny):
    got = {}
    names = [f"L{l}.{k}" for l in range(tiny.n_layers) for k in ("resid_pre", "resid_post")]
    with tiny.hooks({n: _grab(got, n) for n in names}):
        _, out = _run(tiny, output_hidden_states=True)
    hs = out.hidden_states
    for layer in range(tiny.n_layers):
        torch.testing.assert_close(got[f"L{layer}.resid_pre"], hs[layer])
        if layer < tiny.n_layers - 1:  # HF's last hidden state has the final norm applied
            torch.testing.assert_close(got[f"L{layer}.resid_post"], hs[layer + 1])


def test_attn_z_through_W_O_sums_to_attn_out(tiny):
    got = {}
    layer = 1
    with tiny.hooks({f"L{layer}.attn_z": _grab(got, "z"), f"L{layer}.attn_out": _grab(got, "out"),
                     f"L{layer}.mlp_act": _grab(got, "act"), f"L{layer}.mlp_out": _grab(got, "mlp")}):
        _run(tiny)
    z = got["z"]                                                 # [B, T, H, d_head]
    assert z.shape[-2:] == (tiny.n_heads, tiny.d_head)
    W_O = tiny.adapter.W_O(layer)                               # [H, d_head, d_model]
    per_head = torch.einsum("bthd,hdm->bthm", z, W_O)
    b_O = tiny.adapter.b_O(layer)
    expected = per_head.sum(2) + (0 if b_O is None else b_O)
    torch.testing.assert_close(expected, got["out"], atol=1e-5, rtol=1e-4)
    down = tiny.adapter.module(layer, "mlp_down")
    expected_mlp = got["act"] @ tiny.adapter.W_down(layer) + (0 if down.bias is None else down.bias)
    torch.testing.assert_close(expected_mlp, got["mlp"], atol=1e-5, rtol=1e-4)


def test_resid_mid_is_resid_pre_plus_attn_out(tiny):
    got = {}
    names = ["L1.resid_pre", "L1.attn_out", "L1.resid_mid"]
    if tiny.adapter.parallel_residual:
        with pytest.raises(ValueError, match="parallel residual"):
            with tiny.hooks({"L1.resid_mid": lambda a, s: None}):
                pass
        return
    with tiny.hooks({n: _grab(got, n) for n in names}):
        _run(tiny)
    torch.testing.assert_close(got["L1.resid_pre"] + got["L1.attn_out"], got["L1.resid_mid"],
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="read-only"):
        with tiny.hooks({"L1.resid_mid": lambda a, s: a * 2}):
            _run(tiny)


def test_write_hook_changes_output_and_identity_does_not(tiny):
    _, clean = _run(tiny)
    with tiny.hooks({"L1.mlp_act": lambda a, s: a.clone()}):
        _, same = _run(tiny)
    torch.testing.assert_close(same.logits, clean.logits)
    with tiny.hooks({"L1.attn_z": lambda a, s: torch.zeros_like(a)}):
        _, edited = _run(tiny)
    assert (edited.logits - clean.logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="returned shape"):
        with tiny.hooks({"L0.resid_post": lambda a, s: a[:, :1]}):
            _run(tiny)


def test_hooks_removed_after_exception_and_nesting(tiny_llama):
    m = tiny_llama
    counts = {"outer": 0, "inner": 0}
    modules = list(m.hf.modules())
    before = sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in modules)

    def boom(a, s):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks({"L0.resid_post": boom}):
            _run(m)
    with m.hooks({"L0.mlp_act": lambda a, s: counts.__setitem__("outer", counts["outer"] + 1)}):
        with m.hooks({"L0.mlp_act": lambda a, s: counts.__setitem__("inner", counts["inner"] + 1)}):
            _run(m)
        _run(m)
    _run(m)
    assert counts == {"outer": 2, "inner": 1}
    after = sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in modules)
    assert after == before
    with pytest.raises(ValueError, match="out of range"):  # validated before anything installs
        with m.hooks({"L0.mlp_act": lambda a, s: None, "L9.mlp_act": lambda a, s: None}):
            pass
    assert sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in modules) == before


@pytest.mark.parametrize("positions", ["last", "all", 2, [0, -1], "span", "tensor"])
def test_cache_left_and_right_padding_agree(tiny, positions):
    texts = ["I am so grateful for this", "Sorry!", "The meeting moved to Tuesday at noon"]
    spans = [(8, 16), (0, 5), (4, 11)]
    if positions == "tensor":
        positions = torch.tensor([1, 0, 5])
    sites = ["L0.resid_post", "L2.attn_z", "L1.mlp_act"]
    results = []
    for side in ("left", "right"):
        tiny.tokenizer.padding_side = side
        results.append(tiny.cache(texts, sites, positions=positions, spans=spans, batch_size=2,
                                  progress=False))
    for name in sites:
        a, b = results[0][name], results[1][name]
        if positions == "all":
            assert [x.shape[0] for x in a] == [len(t.encode()) for t in texts]
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cache_positions_match_unbatched_forward(tiny_llama):
    """Batched, padded caching equals running each text alone and indexing by hand."""
    m = tiny_llama
    texts = ["a longer sentence here", "short", "mid length one"]
    spans = [(2, 8), (0, 5), (4, 10)]
    got_last = m.cache(texts, ["L1.resid_post"], progress=False)["L1.resid_post"]
    got_span = m.cache(texts, ["L1.resid_post"], positions="span", spans=spans,
                       progress=False)["L1.resid_post"]
    got_idx = m.cache(texts, ["L1.resid_post"], positions=[0, -2], progress=False)["L1.resid_post"]
    for i, text in enumerate(texts):
        _, out = _run(m, [text], output_hidden_states=True)
        h = out.hidden_states[2][0]                            # [T, d_model]; bytes = tokens
        torch.testing.assert_close(got_last[i], h[-1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_span[i], h[spans[i][0]:spans[i][1]].mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_idx[i], h[[0, -2]], atol=1e-5, rtol=1e-4)


def test_cache_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        tiny_llama.cache(["abc"], ["L0.resid_post"], positions=10, progress=False)
    with pytest.raises(ValueError, match="needs spans"):
        tiny_llama.cache(["abc"], ["L0.resid_post"], positions="span", progress=False)
    with pytest.raises(ValueError, match="covers no token"):
        tiny_llama.cache(["abc"], ["L0.resid_post"], positions="span", spans=[(3, 3)], progress=False)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        tiny_llama.cache(["abc"], ["L7.resid_post"], progress=False)


def test_cache_accepts_a_tokenised_batch(tiny_llama):
    texts = ["one short", "a somewhat longer text here"]
    from_texts = tiny_llama.cache(texts, ["L1.resid_post"], positions="all", progress=False)
    enc = tiny_llama.encode(texts, padding_side="left")
    from_batch = tiny_llama.cache(enc, ["L1.resid_post"], positions="all", progress=False)
    for a, b in zip(from_texts["L1.resid_post"], from_batch["L1.resid_post"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="pass the texts"):
        tiny_llama.cache(enc, ["L1.resid_post"], positions="span", spans=[(0, 1)] * 2, progress=False)
