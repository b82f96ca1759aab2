"""Sites and hooks on tiny random models of every family, against HF's own outputs."""
import pytest
import torch

from emofast.sites import Scope, legacy_scope, parse_layers, parse_site, resolve_scale

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


def _joins_residual(model, layer, part, y):
    """What a sublayer's projection output y adds to the residual: y, or in Gemma 2/3's sandwich
    blocks post_norm(y), by hand (RMSNorm with gain 1 + weight)."""
    if model.adapter.model_type not in ("gemma2", "gemma3_text"):
        return y
    norm = getattr(model.adapter.blocks[layer],
                   {"attn": "post_attention_layernorm", "mlp": "post_feedforward_layernorm"}[part])
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps) * (1 + norm.weight)


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
    torch.testing.assert_close(_joins_residual(tiny, layer, "attn", expected), got["out"],
                               atol=1e-5, rtol=1e-4)
    down = tiny.adapter.module(layer, "mlp_down")
    expected_mlp = got["act"] @ tiny.adapter.W_down(layer) + (0 if down.bias is None else down.bias)
    torch.testing.assert_close(_joins_residual(tiny, layer, "mlp", expected_mlp), got["mlp"],
                               atol=1e-5, rtol=1e-4)


def test_resid_mid_is_resid_pre_plus_attn_out(tiny):
    got = {}
    names = ["L1.resid_pre", "L1.attn_out", "L1.resid_mid"]
    if tiny.adapter.parallel_residual:
        with pytest.raises(ValueError, match="parallel residual"):
            with tiny.hooks({"L1.resid_mid": lambda a, s: None}):
                pass
        return
    names += ["L1.mlp_out", "L1.resid_post"]
    with tiny.hooks({n: _grab(got, n) for n in names}):
        _run(tiny)
    torch.testing.assert_close(got["L1.resid_pre"] + got["L1.attn_out"], got["L1.resid_mid"],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["L1.resid_mid"] + got["L1.mlp_out"], got["L1.resid_post"],
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


# ---- the vocabulary: Scope and scale ------------------------------------------------------


@pytest.mark.parametrize("spelling, kind, n, back", [
    ("all", "all", 0, "all"), ("last", "last", 1, "last"), ("last:1", "last", 1, "last"),
    ("last:3", "last", 3, "last:3"), ("from:0", "from", 0, "from:0"),
    ("from:12", "from", 12, "from:12"), ("prompt", "prompt", 0, "prompt"),
    ("generated", "generated", 0, "generated"), (" last:2 ", "last", 2, "last:2")])
def test_scope_spellings_round_trip(spelling, kind, n, back):
    scope = Scope.parse(spelling)
    assert (scope.kind, scope.n, str(scope)) == (kind, n, back)
    assert Scope.parse(str(scope)) == scope and Scope.parse(scope) is scope


@pytest.mark.parametrize("spelling, match", [
    ("first", "unknown scope 'first'"), ("last:0", "k must be >= 1"), ("last:x", "bad scope"),
    ("from:-1", "bad scope"), ("all:3", "bad scope"), (3, "an int is ambiguous"),
    (2.5, "scope must be a Scope or one of")])
def test_bad_scopes(spelling, match):
    with pytest.raises(ValueError, match=match):
        Scope.parse(spelling)


def test_scope_require_and_constructors():
    assert Scope.last_k() == Scope.parse("last") and Scope.from_token(2) == Scope("from", 2)
    assert Scope.parse("last").require("x", "all", "last") == Scope.last_k(1)
    assert Scope.parse("last:4").require("x", "last:k").n == 4
    with pytest.raises(ValueError, match="sweep does not support scope last:4: use one of all, "
                                         "last, from"):
        Scope.parse("last:4").require("sweep", "all", "last", "from")
    with pytest.raises(ValueError, match="k must be >= 1"):
        Scope("last", 0)


def test_legacy_positions_and_rms_warn_with_the_new_spelling():
    with pytest.warns(DeprecationWarning, match=r"f\(positions=3\) is deprecated: use scope='from:3'"):
        assert legacy_scope(3, None, where="f", int_means="from") == Scope.from_token(3)
    with pytest.warns(DeprecationWarning, match="use scope='last:3'"):
        assert legacy_scope(3, None, where="f", int_means="last") == Scope.last_k(3)
    with pytest.warns(DeprecationWarning, match="use scope='all'"):
        assert legacy_scope("all", None, where="f", int_means="from") == Scope()
    assert legacy_scope(None, "from:2", where="f", int_means="from") == Scope.from_token(2)
    with pytest.raises(ValueError, match="give scope= only"):
        legacy_scope(2, "all", where="f", int_means="from")
    with pytest.warns(DeprecationWarning, match=r"g\(rms=True\) is deprecated: use scale='rms'"):
        assert resolve_scale("abs", True, where="g") == "rms"
    assert resolve_scale("rms", None, where="g") == "rms"
    with pytest.raises(ValueError, match="scale must be 'abs' or 'rms'"):
        resolve_scale("log", None, where="g")
    with pytest.raises(ValueError, match="scale='rms' and rms=False contradict"):
        resolve_scale("rms", False, where="g")
    with pytest.raises(ValueError, match="an int is ambiguous, write 'from:3'"):
        Scope.parse(3)


def test_deprecations_point_at_the_callers_line(tiny_llama):
    """Through emofast's frames and torch's decorators (inference_mode) to this file, so that
    Python's default filters show the warning in a user's script."""
    import emofast as ef

    calls = [lambda: ef.sweep(tiny_llama, ["ab"], [[]], ef.KL(), positions=1, progress=False),
             lambda: tiny_llama.cache(["ab"], ["L0.resid_post"], positions="last",
                                      progress=False),
             lambda: ef.Steer(0, torch.ones(32), 1.0, rms=True)]
    for call in calls:
        with pytest.warns(DeprecationWarning) as seen:
            call()
        assert [w.filename for w in seen] == [__file__]
