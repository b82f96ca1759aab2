"""Steering and LM-preservation metrics against plain HF forwards with hand-written hooks."""
import math

import pytest
import torch

from emofast.analysis.directions import EmotionDirections
from emofast.eval import lm_preservation
from emofast.interventions import Steering, generate

TEXTS = ["The parcel arrived on Tuesday morning.", "Please close the window."]


def _dirs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.n_layers, 2, model.d_model, generator=g)
    return EmotionDirections(v / v.norm(dim=-1, keepdim=True), ["joy", "anger"],
                             list(range(model.n_layers)))


def _logits(model, texts=TEXTS):
    enc = model.encode(texts)
    return model.forward(enc["input_ids"], enc["attention_mask"]).logits


def _hf_hook_logits(model, layer, delta_fn):
    """Independent oracle: a plain forward hook on the HF block adding delta_fn(h)."""
    block = model.adapter.blocks[layer]

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        new = h + delta_fn(h)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        return _logits(model)
    finally:
        handle.remove()


@pytest.mark.parametrize("scale", ["abs", "rms"])
def test_steering_matches_hand_hook(tiny, scale):
    dirs = _dirs(tiny)
    layer, alpha = 1, 2.5
    v = dirs.get("anger", layer)
    st = Steering.single(dirs, "anger", [layer], alpha, tiny.n_layers, scale=scale)
    with torch.no_grad(), st.take(slice(0, 2), 2).hooks(tiny):
        got = _logits(tiny)

    def delta(h):
        c = alpha * (h.pow(2).mean(-1, keepdim=True).sqrt() if scale == "rms" else 1.0)
        return c * v

    with torch.no_grad():
        expected = _hf_hook_logits(tiny, layer, delta)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_alpha_zero_is_exactly_unsteered(tiny_llama):
    dirs = _dirs(tiny_llama)
    st = Steering.single(dirs, "joy", range(3), 0.0, tiny_llama.n_layers)
    with torch.no_grad():
        clean = _logits(tiny_llama)
        with st.take(slice(0, 2), 2).hooks(tiny_llama):
            same = _logits(tiny_llama)
    assert torch.equal(clean, same)
    a = generate(tiny_llama, TEXTS, max_new_tokens=5, progress=False)
    b = generate(tiny_llama, TEXTS, intervention=st, max_new_tokens=5, progress=False)
    assert a == b


def test_sign_of_alpha_moves_the_target_logit(tiny):
    """Steering the last layer along a token's unembedding raises (alpha>0) / lowers its logit."""
    last, token = tiny.n_layers - 1, 65
    u = tiny.adapter.W_U[:, token].clone()
    u = u - u.mean()
    v = torch.zeros(tiny.n_layers, 1, tiny.d_model)
    v[last, 0] = u / u.norm()
    dirs = EmotionDirections(v[last:], ["up"], [last])
    with torch.no_grad():
        clean = _logits(tiny)[..., token]
        moved = {}
        for alpha in (-1.0, 1.0):
            st = Steering.single(dirs, "up", [last], alpha, tiny.n_layers)
            with st.take(slice(0, 2), 2).hooks(tiny):
                moved[alpha] = _logits(tiny)[..., token]
    mask = tiny.encode(TEXTS)["attention_mask"].bool()
    assert (moved[1.0] - clean)[mask].min() > 0
    assert (moved[-1.0] - clean)[mask].max() < 0


def test_scope_rules(tiny_llama):
    """last-k edits only the last k positions; prompt/generated split the forward calls."""
    m, dirs, seen = tiny_llama, _dirs(tiny_llama), {}

    def grab(name):
        def fn(act, site):
            seen[name] = act.clone()
        return fn

    enc = m.encode(["abcdefgh"])
    with torch.no_grad(), m.hooks({"L2.resid_pre": grab("clean")}):
        m.forward(enc["input_ids"], enc["attention_mask"])
    for scope, changed in (("last:2", [6, 7]), ("last", [7]), ("all", list(range(8))),
                           ("generated", [])):
        st = Steering.single(dirs, "joy", [1], 3.0, m.n_layers, scope=scope)
        with torch.no_grad(), st.take(slice(0, 1), 1).hooks(m), m.hooks({"L2.resid_pre": grab("s")}):
            m.forward(enc["input_ids"], enc["attention_mask"])       # the first (prompt) call
        diff = (seen["s"] - seen["clean"]).abs().amax(-1)[0]
        assert (diff > 1e-6).nonzero().squeeze(-1).tolist() == changed, scope
    st = Steering.single(dirs, "joy", [1], 3.0, m.n_layers, scope="prompt")
    with torch.no_grad(), st.take(slice(0, 1), 1).hooks(m), m.hooks({"L2.resid_pre": grab("s")}):
        m.forward(enc["input_ids"], enc["attention_mask"])
        first = seen["s"].clone()
        m.forward(enc["input_ids"], enc["attention_mask"])           # a later (generated) call
    assert not torch.allclose(first, seen["clean"]) and torch.equal(seen["s"], seen["clean"])


def test_grid_rows_in_one_batch_match_separate_runs(tiny_llama):
    m, dirs = tiny_llama, _dirs(tiny_llama)
    rows = [("joy", [0, 1], 2.0), (None, [], 0.0), ("anger", [2], -1.5)]
    prompts = ["hello there", "hello there", "hello there"]
    batched = generate(m, prompts, intervention=Steering.rows(dirs, rows, m.n_layers), max_new_tokens=6,
                       progress=False)
    for row, got in zip(rows, batched):
        alone = generate(m, prompts[:1], intervention=Steering.rows(dirs, [row], m.n_layers),
                         max_new_tokens=6, progress=False)
        assert alone == [got]


def test_steering_validation(tiny_llama):
    dirs = _dirs(tiny_llama)
    with pytest.raises(ValueError, match="no direction for emotion 'fear'"):
        Steering.single(dirs, "fear", [0], 1.0, tiny_llama.n_layers)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        Steering.single(dirs, "joy", [5], 1.0, tiny_llama.n_layers)
    with pytest.raises(ValueError, match="steering does not support scope from:2"):
        Steering.single(dirs, "joy", [0], 1.0, tiny_llama.n_layers, scope="from:2")
    with pytest.raises(ValueError, match="scale must be 'abs' or 'rms'"):
        Steering.single(dirs, "joy", [0], 1.0, tiny_llama.n_layers, scale="log")
    partial = EmotionDirections(dirs.vectors[:1], dirs.emotions, [0])
    with pytest.raises(ValueError, match=r"no direction for layer\(s\) \[2\]"):
        Steering.single(partial, "joy", [2], 1.0, tiny_llama.n_layers)


def test_lm_preservation_matches_hf_loss(tiny_llama):
    m = tiny_llama
    [res] = lm_preservation(m, TEXTS[:1], [None])
    enc = m.encode(TEXTS[:1])
    with torch.no_grad():
        loss = m.hf(input_ids=enc["input_ids"], labels=enc["input_ids"]).loss
    assert res.ppl_clean == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert res.ppl_edited == pytest.approx(res.ppl_clean) and res.kl_mean == pytest.approx(0, abs=1e-7)
    st = Steering.single(_dirs(m), "joy", [0, 1], 4.0, m.n_layers)
    [moved] = lm_preservation(m, TEXTS, [st])
    assert moved.kl_mean > 1e-4 and moved.ppl_edited != moved.ppl_clean


def test_preservation_is_batch_invariant_with_last_k_steering(tiny_llama):
    """Left padding puts every row's last tokens at the end: batching must not change results."""
    m = tiny_llama
    st = Steering.single(_dirs(m), "joy", [0, 1], 3.0, scope="last")
    texts = ["hi there", "a much longer sentence than the first one"]
    [together] = lm_preservation(m, texts, [st], batch_size=2)
    [apart] = lm_preservation(m, texts, [st], batch_size=1)
    assert together.kl_mean == pytest.approx(apart.kl_mean, rel=1e-4)
    assert together.ppl_edited == pytest.approx(apart.ppl_edited, rel=1e-4)


def test_misuse_is_refused_with_a_reason(tiny_llama):
    m, dirs = tiny_llama, _dirs(tiny_llama)
    two_rows = Steering.rows(dirs, [("joy", [0], 1.0), ("anger", [0], 1.0)])
    with pytest.raises(ValueError, match="one-row interventions"):
        lm_preservation(m, TEXTS, [two_rows])
    with pytest.raises(ValueError, match="never acts on a teacher-forced text"):
        lm_preservation(m, TEXTS, [Steering.single(dirs, "joy", [0], 1.0, scope="generated")])
    with pytest.raises(ValueError, match="num_beams"):
        generate(m, TEXTS, intervention=Steering.single(dirs, "joy", [0], 1.0), num_beams=2,
                 max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="Steering has 3 rows for 2 prompts"):
        generate(m, TEXTS, intervention=Steering.rows(dirs, [("joy", [0], 1.0)] * 3), progress=False)
    with pytest.raises(ValueError, match="chat=False generates from plain strings"):
        from emofast.data import Prompt
        generate(m, [Prompt("sys", "hi", None, "neutral", "s1")], chat=False, progress=False)
    elsewhere = EmotionDirections(dirs.vectors, dirs.emotions, dirs.layers, site="attn_out")
    with pytest.raises(ValueError, match="read at 'attn_out'"):
        Steering.single(elsewhere, "joy", [0], 1.0)
    with pytest.raises(TypeError, match="takes an Intervention"):
        generate(m, TEXTS, intervention="joy", progress=False)
    with pytest.raises(TypeError, match="takes an Intervention"):
        lm_preservation(m, TEXTS, [dirs])


def test_old_spellings_warn_and_do_the_same(tiny_llama):
    """positions= (an int k: last:k), rms= and generate(steering=) keep working for one release
    with a DeprecationWarning that names the new spelling."""
    m, dirs = tiny_llama, _dirs(tiny_llama)
    new = Steering.single(dirs, "joy", [1], 2.0, m.n_layers, scope="last:2", scale="rms")
    with pytest.warns(DeprecationWarning, match=r"positions=2\) is deprecated: use scope='last:2'"):
        old = Steering.single(dirs, "joy", [1], 2.0, m.n_layers, positions=2, scale="rms")
    with pytest.warns(DeprecationWarning, match=r"rms=True\) is deprecated: use scale='rms'"):
        old_rms = Steering.single(dirs, "joy", [1], 2.0, m.n_layers, scope="last:2", rms=True)
    assert old.scope == old_rms.scope == new.scope and old.scale == old_rms.scale == "rms"
    with pytest.warns(DeprecationWarning, match="use intervention="):
        texts = generate(m, TEXTS, steering=old, max_new_tokens=3, progress=False)
    assert texts == generate(m, TEXTS, intervention=new, max_new_tokens=3, progress=False)
    with pytest.raises(ValueError, match="give scope= only"):
        Steering.single(dirs, "joy", [1], 2.0, m.n_layers, scope="last:1", positions=2)
    with pytest.warns(DeprecationWarning, match="use scope='last:2'"):          # the dataclass
        direct = Steering(dirs, new.emotion_idx, new.alpha, new.layer_mask, positions=2,
                          scale="rms")
    assert direct.scope == new.scope
    with pytest.warns(DeprecationWarning, match="use interventions="):
        [old_pres] = lm_preservation(m, TEXTS, steerings=[new])
    assert old_pres == lm_preservation(m, TEXTS, [new])[0]
