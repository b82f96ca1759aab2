"""The real embedded SmolLM2-135M-Instruct (slow: converts once, then a few seconds)."""
import pytest
import torch

pytestmark = pytest.mark.slow


def test_load_real_model(smollm):
    assert (smollm.n_layers, smollm.d_model, smollm.n_heads, smollm.d_mlp) == (30, 576, 9, 1536)
    assert smollm.adapter.n_kv_heads == 3 and smollm.adapter.W_O(0).shape == (9, 64, 576)


def test_real_cache_matches_hidden_states(smollm):
    texts = ["Thank you so much for fixing my bike!", "The museum closes at five."]
    acts = smollm.cache(texts, ["L7.resid_post", "L29.resid_pre"], pool="last", progress=False)
    smollm.tokenizer.padding_side = "right"
    enc = smollm.encode(texts)
    with torch.no_grad():
        hs = smollm.forward(enc["input_ids"], enc["attention_mask"], output_hidden_states=True).hidden_states
    last = enc["attention_mask"].sum(-1) - 1
    torch.testing.assert_close(acts["L7.resid_post"], hs[8][torch.arange(2), last], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(acts["L29.resid_pre"], hs[29][torch.arange(2), last], atol=1e-4, rtol=1e-4)
