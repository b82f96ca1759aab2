"""load_model: local folders, clear errors for unreachable hubs, bad options, unknown families."""
import time

import pytest
import torch

import emofast
from conftest import make_tiny, tiny_tokenizer


@pytest.fixture
def tiny_folder(tmp_path):
    m = make_tiny("llama")
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    return tmp_path, m


def test_local_folder_loads_and_matches(tiny_folder):
    folder, original = tiny_folder
    model = emofast.load_model(str(folder), device="cpu")
    assert model.adapter.model_type == "llama" and model.n_layers == 3
    enc = model.encode(["hello world"])
    with torch.no_grad():
        a = model.forward(enc["input_ids"], enc["attention_mask"]).logits
        b = original.forward(enc["input_ids"], enc["attention_mask"]).logits
    torch.testing.assert_close(a, b)


def test_offline_hub_id_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        emofast.load_model("someone/not-a-cached-model", device="cpu")
    assert time.perf_counter() - start < 10


def test_bad_options(tiny_folder):
    folder, _ = tiny_folder
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        emofast.load_model(str(folder), quantization="int3")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        emofast.load_model(str(folder), dtype="float8")


def test_int8_quantized_weights_are_readable(tiny_folder):
    """bitsandbytes int8 on CPU: hooks work and W_down dequantises close to the fp32 weight."""
    pytest.importorskip("bitsandbytes")
    folder, original = tiny_folder
    q = emofast.load_model(str(folder), device="cpu", quantization="int8")
    acts = q.cache(["hello there"], ["L1.mlp_act"], progress=False)["L1.mlp_act"]
    assert acts.shape == (1, q.d_mlp) and torch.isfinite(acts).all()
    err = (q.adapter.W_down(1).float() - original.adapter.W_down(1)).abs().max()
    assert err < 0.02 * original.adapter.W_down(1).abs().max()


def test_unsupported_architecture_lists_supported():
    from transformers import OPTConfig, OPTForCausalLM

    hf = OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=16, ffn_dim=32,
                                  num_attention_heads=2, vocab_size=258, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match=r"unsupported architecture 'opt': emofast supports .*llama"):
        emofast.Model(hf, tiny_tokenizer())


def test_mistyped_local_path_is_not_sent_to_the_hub():
    with pytest.raises(FileNotFoundError, match="looks like a path"):
        emofast.load_model("./no-such-model-folder")


def test_int8_gpt2_weights_keep_their_orientation(tmp_path):
    """bitsandbytes replaces GPT-2's Conv1D ([in, out]) by Linear ([out, in])."""
    pytest.importorskip("bitsandbytes")
    m = make_tiny("gpt2")
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    q = emofast.load_model(str(tmp_path), device="cpu", quantization="int8")
    assert q.d_mlp == m.d_mlp == 128
    for got, ref in ((q.adapter.W_down(1), m.adapter.W_down(1)), (q.adapter.W_O(1), m.adapter.W_O(1))):
        assert got.shape == ref.shape
        assert (got.float() - ref).abs().max() < 0.02 * ref.abs().max()
