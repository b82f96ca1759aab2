"""ef.quantize: exactly the named modules change, the reference never does; bytes and bits;
bitsandbytes on CPU; the Gaussian control; bad input; the Q4_1 null check on the real model."""
import pytest
import torch

from emofast.models.identity import model_identity
from emofast.quant import matched_noise, quant_info, quantize
from emofast.quant.apply import weight_out_in

from conftest import FAMILIES, make_tiny


def changed(ref, q):
    a, b = dict(ref.hf.named_parameters()), dict(q.hf.named_parameters())
    return sorted(n for n in a if not torch.equal(a[n], b[n]))


def expected(model, layers, kinds):
    a = model.adapter
    attn, mlp = a.spec.attn_out_proj.split(".")[0], a.spec.mlp_down.split(".")[0]
    out = []
    for name, p in model.hf.named_parameters():
        if not name.endswith(".weight") or p.dim() != 2 or not name.startswith(a.spec.layers):
            continue
        layer = int(name[len(a.spec.layers) + 1:].split(".")[0])
        rest = name[len(a.spec.layers) + 2 + len(str(layer)):]
        if layer not in layers:
            continue
        if ("attn" in kinds and rest.startswith(attn + ".")) or \
                ("mlp" in kinds and rest.startswith(mlp + ".")) or \
                ("down" in kinds and rest == a.spec.mlp_down + ".weight"):
            out.append(name)
    return sorted(out)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kinds", [["attn"], ["mlp"], ["down"], ["attn", "mlp"]])
def test_exactly_the_named_modules_change(family, kinds):
    model = make_tiny(family)
    before = {n: p.clone() for n, p in model.hf.named_parameters()}
    q = quantize(model, "rtn:2:8:asym", layers=[1, 2], modules=kinds)
    assert changed(model, q) == expected(model, [1, 2], kinds)
    assert all(torch.equal(before[n], p) for n, p in model.hf.named_parameters())  # untouched
    info = quant_info(q)
    assert info.layers == [1, 2] and info.first_layer == 1 and info.modules == kinds
    assert info.bits_per_weight == 2 + 32 / 8
    n = sum(weight_out_in(q.hf.get_submodule(c)).numel() for c in info.changed)
    assert info.n_weights == n and info.bytes_quantized == n * info.bits_per_weight / 8
    assert quant_info(model) is None


def test_embed_arm_and_identity(tiny_llama):
    q = quantize(tiny_llama, "q8_0", modules="embed")
    names = changed(tiny_llama, q)
    assert names and all("embed" in n or "lm_head" in n for n in names)
    assert quant_info(q).first_layer == 0 and quant_info(q).layers is None
    assert model_identity(q)["quantization"]["scheme"] == "q8_0"
    assert model_identity(q)["weights_sha256"] != \
        model_identity(tiny_llama)["weights_sha256"]


@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_bitsandbytes_on_chosen_layers_runs_on_cpu(tiny_llama, scheme):
    pytest.importorskip("bitsandbytes")
    q = quantize(tiny_llama, scheme, layers=[2], modules="mlp")
    types = {type(m).__name__ for n, m in q.hf.named_modules() if ".2.mlp." in n}
    assert types & {"Linear8bitLt", "Linear4bit"}
    assert not {type(m).__name__ for n, m in q.hf.named_modules() if ".1.mlp." in n} & \
        {"Linear8bitLt", "Linear4bit"}
    enc = tiny_llama.encode(["hello there"])
    a = tiny_llama.forward(enc["input_ids"], enc["attention_mask"]).logits
    b = q.forward(enc["input_ids"], enc["attention_mask"]).logits
    assert torch.isfinite(b).all() and not torch.equal(a, b)
    # the sweep engine reads dequantized weights through the adapter
    w = q.adapter.W_down(2)
    assert w.shape == tiny_llama.adapter.W_down(2).shape
    bpw = quant_info(q).bits_per_weight       # int8: + an fp32 scale per row of 32 or 48 inputs
    assert 8 + 32 / 48 <= bpw <= 8 + 32 / 32 if scheme == "int8" else bpw == 4.5


def test_matched_noise_has_the_quantization_error_rms(tiny_llama):
    q = quantize(tiny_llama, "rtn:2:8", layers=[0])
    noisy = matched_noise(tiny_llama, q, seed=3)
    assert changed(tiny_llama, noisy) == changed(tiny_llama, q)
    for name in quant_info(q).changed:
        mod = name
        ref = weight_out_in(tiny_llama.hf.get_submodule(mod))
        e_q = weight_out_in(q.hf.get_submodule(mod)) - ref
        e_n = weight_out_in(noisy.hf.get_submodule(mod)) - ref
        assert e_n.pow(2).mean().sqrt() == pytest.approx(float(e_q.pow(2).mean().sqrt()),
                                                         rel=0.25)
    assert quant_info(noisy).scheme == "noise~rtn:2:8:asym"


@pytest.mark.parametrize("call, says", [
    (dict(scheme="rtn:4:5"), "group size 5 does not divide"),
    (dict(scheme="rtn:10:8"), "out of range"),
    (dict(scheme="q4_k"), "unknown scheme"),
    (dict(scheme="rtn:4:8", layers=[3]), "out of range"),
    (dict(scheme="rtn:4:8", modules="ffn"), "unknown module kind"),
    (dict(scheme="rtn:4:8", modules="embed", layers=[0]), "in no layer"),
    (dict(scheme="nf4", modules="embed"), "nn.Linear layers only"),
    (dict(scheme="rtn:4:8", layers=[]), "empty"),
])
def test_bad_input_says_what_to_do(tiny_llama, call, says):
    with pytest.raises(ValueError, match=says):
        quantize(tiny_llama, **call)


@pytest.mark.slow
def test_q4_1_null_check_on_the_embedded_model(smollm):
    """The embedded weights are Q4_1 values: re-quantizing every linear reproduces them."""
    q = quantize(smollm, "q4_1")
    assert changed(smollm, q) == []
    enc = smollm.encode(["The weather today is", "I can't believe she said that"])
    a = smollm.forward(enc["input_ids"], enc["attention_mask"]).logits.log_softmax(-1)
    b = q.forward(enc["input_ids"], enc["attention_mask"]).logits.log_softmax(-1)
    kl = (a.exp() * (a - b)).sum(-1)[enc["attention_mask"].bool()]
    assert float(kl.max()) == 0.0
    assert quant_info(q).bits_per_weight == 5.0 and len(quant_info(q).changed) == 7 * 30


def rtn_numpy(w, bits, group, symmetric):
    """An independent numpy fake quantizer (float16 scales, np.rint: half to even)."""
    import numpy as np

    x = w.astype(np.float32).reshape(w.shape[0], -1, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = (np.abs(x).max(-1, keepdims=True) / np.float32(qmax)).astype(np.float16)
        s = s.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.clip(np.rint(x / s), -qmax, qmax)
        y = np.where(s == 0, 0.0, q * s)
    else:
        lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
        s = ((hi - lo) / np.float32(2 ** bits - 1)).astype(np.float16).astype(np.float32)
        m = lo.astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.clip(np.rint((x - m) / s), 0, 2 ** bits - 1)
        y = np.where(s == 0, m, q * s + m)
    return torch.from_numpy(y.reshape(w.shape).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("scheme, bits, group, sym", [("rtn:2:32", 2, 32, False),
                                                      ("rtn:4:64:sym", 4, 64, True),
                                                      ("rtn:8:192:asym", 8, 192, False)])
def test_real_weights_equal_an_independent_numpy_quantizer(smollm, scheme, bits, group, sym):
    q = quantize(smollm, scheme, layers=[29], modules="mlp")
    for name in quant_info(q).changed:
        w = weight_out_in(smollm.hf.get_submodule(name))
        got = weight_out_in(q.hf.get_submodule(name))
        assert torch.equal(got, rtn_numpy(w.numpy(), bits, group, sym)), name
