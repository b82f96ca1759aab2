"""emofast.kernels (and the whole library) where Triton is not installed: a fresh interpreter with
the triton module hidden imports everything, runs every torch-reference face and the CPU faces,
and a named Triton face raises a clear error instead of an ImportError deep inside."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["triton"] = None           # `import triton` now raises ModuleNotFoundError
    import torch
    import emofast.kernels as K
    from emofast.kernels import dispatch

    assert not dispatch.triton_available()
    x = torch.randn(2, 3, 8)
    rv, mask = torch.tensor([0, -1]), torch.tensor([[5]], dtype=torch.int32)
    want = x.clone()
    want[0, :, [0, 2]] = 0
    for impl in ("torch", None):
        assert torch.equal(K.masked_ablate(x, rv, mask, mode="zero", impl=impl), want)
        out = K.steer_add(x, rv, torch.ones(1, 8), 2.0, impl=impl)
        assert torch.equal(out[0], x[0] + 2) and torch.equal(out[1], x[1])
    W_enc, b_enc = torch.randn(8, 16), torch.zeros(16)
    acts = K.sae_encode(x, W_enc, b_enc, activation="relu", impl="torch")
    assert torch.equal(acts, (x @ W_enc).relu())
    top = K.sae_encode_reference(x, W_enc, b_enc, activation="topk", k=4)
    W_dec = torch.randn(16, 8)
    dec = K.sae_decode(top.indices, top.values, W_dec, impl="torch")
    torch.testing.assert_close(dec, K.sae_decode_reference(top.indices, top.values, W_dec))
    try:
        K.steer_add(x, rv, torch.ones(1, 8), 2.0, impl="triton")
    except RuntimeError as e:
        assert "triton is not installed" in str(e), e
    else:
        raise AssertionError("impl='triton' ran without triton")

    import emofast as ef                   # the whole library, and a sweep on a tiny model
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "a": 1, "b": 2}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=3)).eval()
    model = ef.Model(hf, tok, "tiny")
    res = ef.sweep(model, ["a b a", "b b"], [[], [ef.Edit(1, "attn_z", [0])]], ef.KL(),
                   progress=False)
    assert res.values[0].abs() < 1e-6 and res.values[1] > 0
    assert sys.modules["triton"] is None   # nothing imported it behind our back
    print("ok")
""")


def test_kernels_and_library_work_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
