"""steer_add: every face (triton via the interpreter, cpp, torch) against the torch reference,
and the reference itself against a dead-simple python loop in float64."""
import math

import pytest
import torch

from emofast.kernels import cpp
from emofast.kernels.ops.steer_add import steer_add, steer_add_reference
from row_edit_cases import shared_bad

HAS_CPP = cpp.has("steer_add")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="emofast._C (C++ extension) not built")
IMPLS = ["triton", pytest.param("cpp", marks=needs_cpp), "torch"]

# (dtype, atol, rtol). fp32: h + c * d may be fused (torch's addcmul uses FMA: one rounding) or
# not (C++, interpreter: two), and the rms reduction order differs per face: a few fp32 ulps of
# c * d, which can exceed rtol of a small h + c * d, hence atol 1e-5 (torch's fp32 default).
# bf16 / fp16: those ulps can flip the final rounding to the dtype by one ulp (and the Triton
# interpreter truncates fp32 -> bf16 where torch rounds to nearest even): one ulp of the dtype,
# 2**-7 relative for bf16, 2**-10 for fp16.
DTYPES = [(torch.float32, 1e-5, 1.3e-6), (torch.bfloat16, 1e-2, 2**-7),
          (torch.float16, 1e-3, 2**-10)]


def make_case(B, T, D, V, dtype, seed=0):
    """Random inputs; row 1 (if any) is -1; positions from a random pos_start in [0, T]."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(B, T, D, generator=g) * 2).to(dtype)
    directions = torch.randn(V, D, generator=g)                     # fp32, read as fp32
    row_variant = torch.randint(0, V, (B,), generator=g, dtype=torch.int32)
    if B > 1:
        row_variant[1] = -1
    alpha = torch.randn(B, generator=g)
    pos_start = torch.randint(0, T + 1, (B,), generator=g)
    return h, row_variant, directions, alpha, pos_start


def hand_loop(h, row_variant, directions, alpha, pos_start, rms):
    """The contract in float64, one feature at a time."""
    out = h.double().clone()
    B, T, D = h.shape
    for b in range(B):
        v = int(row_variant[b])
        if v < 0:
            continue
        for t in range(int(pos_start[b]), T):
            c = float(alpha[b])
            if rms:
                c *= math.sqrt(sum(float(h[b, t, i]) ** 2 for i in range(D)) / D)
            for i in range(D):
                out[b, t, i] = float(h[b, t, i]) + c * float(directions[v, i])
    return out


@pytest.mark.parametrize("scale", ["abs", "rms"])
def test_reference_matches_hand_loop(scale):
    h, rv, dirs, alpha, pos = make_case(3, 4, 13, 2, torch.float32, seed=1)
    got = steer_add_reference(h, rv, dirs, alpha, pos_start=pos, scale=scale)
    torch.testing.assert_close(got.double(), hand_loop(h, rv, dirs, alpha, pos, scale == "rms"),
                               atol=1e-5, rtol=1e-5)  # fp32 result vs float64 loop


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scale", ["abs", "rms"])
def test_matches_hand_loop(impl, scale):
    h, rv, dirs, alpha, pos = make_case(2, 3, 10, 2, torch.float32, seed=2)
    got = steer_add(h, rv, dirs, alpha, pos_start=pos, scale=scale, impl=impl)
    torch.testing.assert_close(got.double(), hand_loop(h, rv, dirs, alpha, pos, scale == "rms"),
                               atol=1e-5, rtol=1e-5)


# (B, T, d_model, V): non-powers of two; 8200 > 8192 takes the Triton two-pass loop.
SHAPES = [(3, 5, 41, 3), (2, 3, 300, 1), (1, 2, 8200, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", ["abs", "rms"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference(impl, dtype, atol, rtol, scale, shape):
    B, T, D, V = shape
    h, rv, dirs, alpha, pos = make_case(B, T, D, V, dtype, seed=D)
    want = steer_add_reference(h, rv, dirs, alpha, pos_start=pos, scale=scale)
    h0 = h.clone()
    got = steer_add(h, rv, dirs, alpha, pos_start=pos, scale=scale, impl=impl)
    assert got.dtype == h.dtype and got.shape == h.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    assert torch.equal(h, h0), "out of place must leave h untouched"
    got2 = steer_add(h, rv, dirs, alpha, pos_start=pos, scale=scale, inplace=True, impl=impl)
    assert got2 is h
    torch.testing.assert_close(h, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS)
def test_edge_cases(impl):
    h, rv, dirs, alpha, _ = make_case(3, 4, 24, 3, torch.float32, seed=3)
    # every row -1, or pos_start = T: h back, bit for bit
    assert torch.equal(steer_add(h, torch.full((3,), -1), dirs, alpha, impl=impl), h)
    assert torch.equal(steer_add(h, rv, dirs, alpha, pos_start=torch.full((3,), 4), scale="rms",
                                 impl=impl), h)
    # pos_start = 0 is the same as none
    torch.testing.assert_close(
        steer_add(h, rv, dirs, alpha, pos_start=torch.zeros(3, dtype=torch.int32), impl=impl),
        steer_add_reference(h, rv, dirs, alpha))
    # V = 1 and a python float alpha (broadcast to every row)
    one = torch.randn(1, 24)
    want = h + 0.5 * one
    torch.testing.assert_close(steer_add(h, torch.zeros(3, dtype=torch.long), one, 0.5, impl=impl),
                               want)
    # V = 0 (no directions, every row -1)
    empty = torch.zeros(0, 24)
    assert torch.equal(steer_add(h, torch.full((3,), -1), empty, 1.0, impl=impl), h)
    # bf16 directions and alpha are read as fp32
    dirs16, alpha16 = dirs.bfloat16(), alpha.half()
    torch.testing.assert_close(steer_add(h, rv, dirs16, alpha16, impl=impl),
                               steer_add_reference(h, rv, dirs16.float(), alpha16.float()))


@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_non_contiguous(impl):
    h = torch.randn(2, 24, 5).transpose(1, 2)                      # [B, T, d_model] view
    assert not h.is_contiguous()
    rv, dirs = torch.tensor([0, 1]), torch.randn(2, 24)
    want = steer_add_reference(h, rv, dirs, 2.0, scale="rms")
    out = steer_add(h, rv, dirs, 2.0, scale="rms", inplace=True, impl=impl)
    assert out is h
    torch.testing.assert_close(h, want)


BAD = shared_bad("h", "[B, T, d_model]") + [  # (overrides, error fragment)
    (dict(directions=torch.randn(2, 7)), r"directions must be \[V, d_model\] with d_model = 8"),
    (dict(directions=torch.ones(2, 8, dtype=torch.long)), "directions must be floating point"),
    (dict(alpha=torch.ones(3)), r"alpha must be a float \[B\] = \[2\] tensor"),
    (dict(alpha=torch.ones(2, dtype=torch.long)), r"alpha must be a float \[B\]"),
    (dict(alpha="strong"), "alpha must be a float"),
    (dict(rms=1), "rms must be a bool"),
    (dict(scale="log"), "scale must be 'abs' or 'rms'"),
    (dict(directions=torch.randn(2, 8, device="meta")), "directions is on meta"),
]


@pytest.mark.parametrize("override, match", BAD)
def test_bad_inputs(override, match):
    kw = dict(h=torch.randn(2, 3, 8), row_variant=torch.tensor([0, -1]),
              directions=torch.randn(2, 8), alpha=torch.ones(2), pos_start=None)
    kw.update(override)
    with pytest.raises(ValueError, match=match):
        steer_add(kw.pop("h"), kw.pop("row_variant"), kw.pop("directions"), kw.pop("alpha"), **kw)


@needs_cpp
def test_cpp_op_errors():
    h, rv = torch.randn(2, 3, 8), torch.tensor([0, -1])
    dirs, alpha = torch.randn(2, 8), torch.ones(2)
    op = torch.ops.emofast.steer_add
    op(h, rv, dirs, alpha, None, True)  # the good call runs
    cases = [((h, torch.tensor([0, 2]), dirs, alpha, None, False), r"row_variant\[1\] = 2"),
             ((h, rv, dirs[:, :7], alpha, None, False), r"directions must be \[V, d_model\]"),
             ((h, rv, dirs, alpha[:1], None, False), r"alpha must be \[B\] = \[2\]"),
             ((h, rv, dirs, alpha, torch.tensor([0, 5]), False), r"pos_start\[1\] = 5"),
             ((h.double(), rv, dirs, alpha, None, False), "float32, bfloat16 or float16")]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


def test_autograd_rule():
    h = torch.randn(2, 3, 8, requires_grad=True)
    dirs = torch.randn(2, 8, requires_grad=True)
    rv = torch.tensor([1, -1])
    steer_add(h, rv, dirs, 2.0).sum().backward()  # impl=None -> differentiable torch reference
    torch.testing.assert_close(h.grad, torch.ones(2, 3, 8))
    torch.testing.assert_close(dirs.grad, torch.stack([torch.zeros(8), torch.full((8,), 6.0)]))
    with pytest.raises(RuntimeError, match="forward-only"):
        steer_add(h, rv, dirs, 2.0, impl="cpp")


@needs_cpp
def test_opcheck():
    g = torch.Generator().manual_seed(5)
    h, dirs = torch.randn(2, 3, 40, generator=g), torch.randn(3, 40, generator=g)
    rv, alpha, pos = torch.tensor([2, -1]), torch.randn(2, generator=g), torch.tensor([1, 0])
    for args in [(h, rv, dirs, alpha, None, False), (h, rv, dirs, alpha, pos, True)]:
        torch.library.opcheck(torch.ops.emofast.steer_add.default, args)
        torch.library.opcheck(torch.ops.emofast.steer_add_.default, (h.clone(),) + args[1:])


def test_impl_asked_for_by_name(monkeypatch):
    h, rv, dirs = torch.randn(2, 3, 8), torch.tensor([0, -1]), torch.randn(1, 8)
    with pytest.raises(ValueError, match="impl must be one of"):
        steer_add(h, rv, dirs, 1.0, impl="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        steer_add(h, rv, dirs, 1.0, impl="triton")


def test_old_rms_spelling_warns_and_gives_the_same():
    g = torch.Generator().manual_seed(2)
    h, dirs = torch.randn(2, 3, 8, generator=g), torch.randn(1, 8, generator=g)
    rv = torch.tensor([0, -1])
    with pytest.warns(DeprecationWarning, match=r"steer_add\(rms=True\) is deprecated"):
        old = steer_add(h, rv, dirs, 1.5, rms=True)
    assert torch.equal(old, steer_add(h, rv, dirs, 1.5, scale="rms"))
