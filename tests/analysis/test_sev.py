"""Expressed activations, sev6 directions, their cache and the default directions, on a tiny
random model (independent: hidden states of a plain forward, a direct sev_directions call)."""
import torch

from conftest import make_tiny
from emofast.analysis import (cached_sev_directions, default_directions, expressed_activations,
                              sev_directions)
from emofast.data import load_skeletons, sev_prompts


def test_expressed_activations_average_exactly_the_prefill_tokens():
    m = make_tiny("llama")
    prompts = sev_prompts(load_skeletons("sev6", split="train")[:1], instructed=False, prefill=True)[:2]
    got = expressed_activations(m, prompts, progress=False)                  # [L, 2, d]
    for i, p in enumerate(prompts):
        enc = m.encode([m.chat_text(p)], templated=True)
        with torch.no_grad():
            hs = m.forward(enc["input_ids"], enc["attention_mask"], output_hidden_states=True).hidden_states
        n = len(p.prefill.encode())                                       # byte tokenizer
        torch.testing.assert_close(got[1, i], hs[2][0, -n:].mean(0), atol=1e-5, rtol=1e-4)
    dirs = sev_directions(m, load_skeletons("sev6", split="train")[:2], progress=False)
    assert dirs.vectors.shape == (3, 6, m.d_model) and dirs.method == "group_centred_expressed"


def test_cached_sev_directions_are_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path))
    m = make_tiny("llama")
    skeletons = load_skeletons("sev6", split="train")[:2]
    first = cached_sev_directions(m, skeletons, progress=False)
    [entry] = list((tmp_path / "directions").iterdir())
    assert not entry.name.endswith(".tmp") and (entry / "directions.safetensors").is_file()
    again = cached_sev_directions(m, skeletons, progress=False)
    assert torch.equal(first.vectors, again.vectors)
    other = make_tiny("llama")
    other.hf.to(torch.float64)                           # same name, other dtype: a new entry
    cached_sev_directions(other, skeletons, progress=False)
    assert len(list((tmp_path / "directions").iterdir())) == 2


def test_default_directions(monkeypatch, tmp_path):
    """A folder when given, else the sev6 directions of every train skeleton, independently
    computed by sev_directions."""
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path / "cache"))
    m = make_tiny("llama")
    want = sev_directions(m, load_skeletons("sev6", split="train"), progress=False)
    got = default_directions(m, progress=False)
    torch.testing.assert_close(got.vectors, want.vectors)
    want.save(tmp_path / "saved")
    assert torch.equal(default_directions(m, tmp_path / "saved").vectors, want.vectors)
