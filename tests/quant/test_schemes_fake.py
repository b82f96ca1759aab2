"""Scheme spellings and fake quantization against hand computations and the gguf package."""
import math

import numpy as np
import pytest
import torch

from emofast.quant import fake_quantize, gguf_roundtrip, parse_scheme, rtn


def rtn_by_hand(w, bits, group, symmetric):
    """Element by element with numpy's float16 and Python's round (half to even)."""
    out = np.zeros(w.shape, dtype=np.float64)
    for i in range(w.shape[0]):
        for g0 in range(0, w.shape[1], group):
            x = [float(v) for v in w[i, g0:g0 + group]]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = float(np.float16(np.float32(max(abs(v) for v in x)) / np.float32(qmax)))
                y = [0.0 if s == 0 else min(max(round(float(np.float32(v) / np.float32(s))),
                                                -qmax), qmax) * s for v in x]
            else:
                lo, hi = min(x), max(x)
                s = float(np.float16(np.float32(hi - lo) / np.float32(2 ** bits - 1)))
                m = float(np.float16(lo))
                y = [m if s == 0 else min(max(round(float((np.float32(v) - np.float32(m))
                                                          / np.float32(s))), 0), 2 ** bits - 1)
                     * s + m for v in x]
            out[i, g0:g0 + group] = y
    return torch.tensor(out, dtype=torch.float32)


def test_spellings_round_trip_and_defaults():
    assert str(parse_scheme("rtn:3:64")) == "rtn:3:64:asym"      # k <= 3: asymmetric
    assert str(parse_scheme("rtn:4:32")) == "rtn:4:32:sym"
    assert str(parse_scheme("RTN:2:32:sym")) == "rtn:2:32:sym"
    for s in ("int8", "nf4", "fp4", "q4_0", "q4_1", "q5_0", "q8_0"):
        assert str(parse_scheme(s)) == s
    assert parse_scheme("rtn:4:32:sym").bits_per_weight(576) == 4.5
    assert parse_scheme("rtn:3:64:asym").bits_per_weight(576) == 3.5
    assert parse_scheme("q4_0").bits_per_weight(576) == 4.5
    assert parse_scheme("q4_1").bits_per_weight(576) == 5.0
    assert parse_scheme("q5_0").bits_per_weight(576) == 5.5
    assert parse_scheme("q8_0").bits_per_weight(576) == 8.5
    assert parse_scheme("int8").bits_per_weight(64) == 8.5
    assert parse_scheme("nf4").bits_per_weight(576) == 4.5


@pytest.mark.parametrize("bad, says", [("rtn:1:32", "out of range"), ("rtn:9:32", "out of range"),
                                       ("rtn:4", "rtn:BITS:GROUP"), ("rtn:4:0", ">= 1"),
                                       ("rtn:4:x", "integers"), ("rtn:4:32:mid", "sym or asym"),
                                       ("q3_k", "unknown scheme"), ("int4", "unknown scheme")])
def test_bad_spellings_say_what_is_wrong(bad, says):
    with pytest.raises(ValueError, match=says):
        parse_scheme(bad)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [4, 8])
def test_rtn_equals_the_hand_computation(bits, symmetric, group):
    g = torch.Generator().manual_seed(bits * 10 + group)
    w = torch.randn(3, 16, generator=g) * torch.logspace(-3, 1, 16)     # scales vary per group
    w[0, :group] = 0                                                    # an all-zero group
    w[1, group:2 * group] = 0.25                                        # a constant group
    got = rtn(w, bits, group, symmetric)
    torch.testing.assert_close(got, rtn_by_hand(w.numpy(), bits, group, symmetric),
                               rtol=0, atol=1e-7)
    assert (got[0, :group] == 0).all()


def test_rtn_by_hand_small_cases():
    # k = 2 symmetric: qmax 1, s = fp16(0.6); 0.3 / s < 0.5 rounds to 0
    w = torch.tensor([[0.3, -0.6, 0.1, 0.0]])
    s = float(np.float16(0.6))
    torch.testing.assert_close(rtn(w, 2, 4, True), torch.tensor([[0.0, -s, 0.0, 0.0]]))
    # k = 8 asymmetric over two groups with their own scale and minimum
    w = torch.tensor([[0.0, 1.0, 0.5, 0.25, -2.0, 2.0, 0.0, 1.0]])
    got = rtn(w, 8, 4, False)
    s1, s2 = float(np.float16(1 / 255)), float(np.float16(4 / 255))
    m2 = -2.0
    want = [round(v / s1) * s1 for v in (0.0, 1.0, 0.5, 0.25)] + \
        [round((v - m2) / s2) * s2 + m2 for v in (-2.0, 2.0, 0.0, 1.0)]
    torch.testing.assert_close(got, torch.tensor([want]), rtol=0, atol=1e-6)


def test_half_to_even():
    # s = 1 exactly (max 1, qmax 1 at k = 2): 0.5 -> 0, -0.5 -> -0 (even), 1 stays
    w = torch.tensor([[0.5, -0.5, 1.0, 0.0]])
    assert rtn(w, 2, 4, True).tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_rtn_keeps_dtype_and_refuses_a_group_that_does_not_divide():
    w = torch.randn(4, 64, dtype=torch.bfloat16)
    assert rtn(w, 4, 32, True).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="does not divide the input width 64"):
        rtn(w, 4, 48, True)


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q5_0", "q8_0"])
def test_gguf_formats_are_the_packages_own_math(fmt):
    import gguf

    kind = getattr(gguf.GGMLQuantizationType, fmt.upper())
    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(1))
    want = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), kind), kind)
    got = fake_quantize(w, parse_scheme(fmt))
    assert torch.equal(got, torch.from_numpy(want).reshape(w.shape))
    assert torch.equal(gguf_roundtrip(got, fmt), got)        # idempotent: a second pass is exact
    # error within half a step of each block's scale
    d = (w.view(8, 3, 32).abs().amax(-1) / {"q8_0": 127, "q5_0": 16, "q4_0": 8,
                                           "q4_1": 7.5}[fmt])
    err = (got - w).abs().view(8, 3, 32).amax(-1)
    assert (err <= d * 1.01 + 1e-6).all()


def test_q8_0_by_hand():
    # llama.cpp's Q8_0: d = max|x| / 127 in fp16, q = round(x / d)
    x = torch.linspace(-1, 1, 32)[None]
    d = float(np.float16(1.0 / 127))
    want = torch.tensor([[math.copysign(math.floor(abs(v) / d + 0.5), v) * d for v in
                          x[0].tolist()]])
    torch.testing.assert_close(gguf_roundtrip(x, "q8_0"), want, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 32"):
        gguf_roundtrip(torch.zeros(2, 40), "q8_0")
