"""Model.cache: every pool against unbatched HF forwards, left and right padding alike, a
tokenised batch, bad input, and the old positions= spelling."""
import pytest
import torch

TEXTS = ["Thank you so much for the help!", "The bus leaves at nine.", "I am furious about it."]


def _run(model, texts=TEXTS, **kw):
    enc = model.encode(texts)
    return enc, model.forward(enc["input_ids"], enc["attention_mask"], **kw)


@pytest.mark.parametrize("pool", ["last", "all", "mean", 2, [0, -1], "span", "tensor"])
def test_cache_left_and_right_padding_agree(tiny, pool):
    texts = ["I am so grateful for this", "Sorry!", "The meeting moved to Tuesday at noon"]
    spans = [(8, 16), (0, 5), (4, 11)]
    if pool == "tensor":
        pool = torch.tensor([1, 0, 5])
    sites = ["L0.resid_post", "L2.attn_z", "L1.mlp_act"]
    results = []
    for side in ("left", "right"):
        tiny.tokenizer.padding_side = side
        results.append(tiny.cache(texts, sites, pool=pool, spans=spans, batch_size=2,
                                  progress=False))
    for name in sites:
        a, b = results[0][name], results[1][name]
        if pool == "all":
            assert [x.shape[0] for x in a] == [len(t.encode()) for t in texts]
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cache_pools_match_unbatched_forward(tiny_llama):
    """Batched, padded caching equals running each text alone and indexing by hand."""
    m = tiny_llama
    texts = ["a longer sentence here", "short", "mid length one"]
    spans = [(2, 8), (0, 5), (4, 10)]
    got_last = m.cache(texts, ["L1.resid_post"], progress=False)["L1.resid_post"]
    got_span = m.cache(texts, ["L1.resid_post"], pool="span", spans=spans,
                       progress=False)["L1.resid_post"]
    got_idx = m.cache(texts, ["L1.resid_post"], pool=[0, -2], progress=False)["L1.resid_post"]
    for i, text in enumerate(texts):
        _, out = _run(m, [text], output_hidden_states=True)
        h = out.hidden_states[2][0]                            # [T, d_model]; bytes = tokens
        torch.testing.assert_close(got_last[i], h[-1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_span[i], h[spans[i][0]:spans[i][1]].mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_idx[i], h[[0, -2]], atol=1e-5, rtol=1e-4)


def test_cache_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        tiny_llama.cache(["abc"], ["L0.resid_post"], pool=10, progress=False)
    with pytest.raises(ValueError, match="needs spans"):
        tiny_llama.cache(["abc"], ["L0.resid_post"], pool="span", progress=False)
    with pytest.raises(ValueError, match="covers no token"):
        tiny_llama.cache(["abc"], ["L0.resid_post"], pool="span", spans=[(3, 3)], progress=False)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        tiny_llama.cache(["abc"], ["L7.resid_post"], progress=False)


def test_cache_accepts_a_tokenised_batch(tiny_llama):
    texts = ["one short", "a somewhat longer text here"]
    from_texts = tiny_llama.cache(texts, ["L1.resid_post"], pool="all", progress=False)
    enc = tiny_llama.encode(texts, padding_side="left")
    from_batch = tiny_llama.cache(enc, ["L1.resid_post"], pool="all", progress=False)
    for a, b in zip(from_texts["L1.resid_post"], from_batch["L1.resid_post"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="pass the texts"):
        tiny_llama.cache(enc, ["L1.resid_post"], pool="span", spans=[(0, 1)] * 2, progress=False)


def test_old_positions_spelling_warns_and_gives_the_same(tiny_llama):
    new = tiny_llama.cache(TEXTS, ["L1.mlp_act"], pool="mean", progress=False)
    with pytest.warns(DeprecationWarning, match=r"cache\(positions='mean'\) is deprecated: use "
                                                r"pool='mean'"):
        old = tiny_llama.cache(TEXTS, ["L1.mlp_act"], positions="mean", progress=False)
    assert torch.equal(new["L1.mlp_act"], old["L1.mlp_act"])
