"""masked_ablate: every face (triton via the interpreter, cpp, torch) against the torch reference,
and the reference itself against a dead-simple python loop."""
import pytest
import torch

from emofast.kernels import cpp
from emofast.kernels.ops.masked_ablate import MODES, masked_ablate, masked_ablate_reference
from row_edit_cases import shared_bad

HAS_CPP = cpp.has("masked_ablate")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="emofast._C (C++ extension) not built")
IMPLS = ["triton", pytest.param("cpp", marks=needs_cpp), "torch"]

# (dtype, atol, rtol). The op only selects, copies and (mode scale) multiplies once in fp32, so
# fp32 and fp16 are exact on every face. bf16 is exact for cpp/torch, but the Triton interpreter
# rounds fp32 -> bf16 by truncation (torch and GPU Triton round to nearest even) where a value is
# rounded in-kernel (fp32 fill, scale product): allow one bf16 ulp (2**-7 relative).
DTYPES = [(torch.float32, 0.0, 0.0), (torch.bfloat16, 0.0, 2**-7), (torch.float16, 0.0, 0.0)]


def make_case(B, T, W, group, V, mode, dtype, seed=0, with_pos=True):
    """Random inputs; variant 1 (if any) has an empty mask, row 1 (if any) is -1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, W, generator=g).to(dtype)
    n_words = (W // group + 31) // 32
    mask = torch.randint(-2**31, 2**31 - 1, (V, n_words), generator=g, dtype=torch.int32)
    if V > 1:
        mask[1] = 0
    row_variant = torch.randint(0, V, (B,), generator=g)
    if B > 1:
        row_variant[1] = -1
    pos_start = torch.randint(0, T + 1, (B,), generator=g, dtype=torch.int32) if with_pos else None
    fill = {"zero": None, "scale": -0.37,
            "mean": torch.randn(W, generator=g),                       # fp32: cast to x.dtype
            "patch": torch.randn(B, T, W, generator=g).to(dtype)}[mode]
    return x, row_variant, mask, fill, pos_start


def hand_loop(x, row_variant, mask, mode, fill, group, pos_start):
    """The contract, one feature at a time."""
    out = x.clone()
    B, T, W = x.shape
    for b in range(B):
        v = int(row_variant[b])
        if v < 0:
            continue
        for t in range(int(pos_start[b]) if pos_start is not None else 0, T):
            for u in range(W // group):
                if (int(mask[v, u // 32]) >> (u % 32)) & 1:
                    for w in range(u * group, (u + 1) * group):
                        if mode == "zero":
                            out[b, t, w] = 0.0
                        elif mode == "mean":
                            out[b, t, w] = fill[w]
                        elif mode == "patch":
                            out[b, t, w] = fill[b, t, w]
                        else:
                            out[b, t, w] = x[b, t, w] * fill
    return out


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_hand_loop(mode, group):
    x, rv, mask, fill, pos = make_case(3, 4, 36, group, 3, mode, torch.float32, seed=1)
    want = hand_loop(x, rv, mask, mode, fill, group, pos)
    got = masked_ablate_reference(x, rv, mask, mode=mode, fill=fill, group=group, pos_start=pos)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_hand_loop(impl, mode):
    x, rv, mask, fill, pos = make_case(2, 3, 12, 2, 2, mode, torch.float32, seed=2)
    got = masked_ablate(x, rv, mask, mode=mode, fill=fill, group=2, pos_start=pos, impl=impl)
    torch.testing.assert_close(got, hand_loop(x, rv, mask, mode, fill, 2, pos), atol=0, rtol=0)


# (B, T, W, group, V): non-powers of two; head-level group=7 (9 heads); W=1100 spans two
# 1024-wide Triton blocks and 35 mask words.
SHAPES = [(3, 5, 41, 1, 3), (2, 3, 63, 7, 2), (2, 2, 1100, 1, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference(impl, dtype, atol, rtol, mode, shape):
    B, T, W, group, V = shape
    x, rv, mask, fill, pos = make_case(B, T, W, group, V, mode, dtype, seed=W)
    want = masked_ablate_reference(x, rv, mask, mode=mode, fill=fill, group=group, pos_start=pos)
    x0 = x.clone()
    got = masked_ablate(x, rv, mask, mode=mode, fill=fill, group=group, pos_start=pos, impl=impl)
    assert got.dtype == x.dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    assert torch.equal(x, x0), "out of place must leave x untouched"
    got2 = masked_ablate(x, rv, mask, mode=mode, fill=fill, group=group, pos_start=pos,
                         inplace=True, impl=impl)
    assert got2 is x
    torch.testing.assert_close(x, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", IMPLS)
def test_edge_cases(impl):
    x, rv, mask, fill, _ = make_case(3, 4, 40, 1, 3, "patch", torch.float32, seed=3)
    kw = dict(mode="patch", fill=fill, impl=impl)
    # every row -1: x back, bit for bit
    assert torch.equal(masked_ablate(x, torch.full((3,), -1), mask, **kw), x)
    # an empty variant (mask all zero) edits nothing
    assert torch.equal(masked_ablate(x, torch.tensor([1, 1, 1]), mask, **kw), x)
    # pos_start = T: no edit; pos_start = 0: same as no pos_start
    assert torch.equal(masked_ablate(x, rv, mask, pos_start=torch.full((3,), 4), **kw), x)
    at0 = masked_ablate(x, rv, mask, pos_start=torch.zeros(3, dtype=torch.long), **kw)
    want = masked_ablate_reference(x, rv, mask, mode="patch", fill=fill)
    torch.testing.assert_close(at0, want, atol=0, rtol=0)
    # V = 1, every unit set: the patched run comes back everywhere
    full = torch.full((1, 2), -1, dtype=torch.int32)
    assert torch.equal(masked_ablate(x, torch.zeros(3, dtype=torch.int32), full, **kw), fill)
    # bits past the last unit are ignored: 40 units -> word 1 has 8 live bits
    live = full.clone()
    live[0, 1] = 0xFF
    assert torch.equal(masked_ablate(x, torch.zeros(3, dtype=torch.int32), live, **kw), fill)
    # V = 0 (no variants, every row -1)
    empty = torch.zeros(0, 2, dtype=torch.int32)
    assert torch.equal(masked_ablate(x, torch.full((3,), -1), empty, mode="zero", impl=impl), x)


@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_non_contiguous(impl):
    z = torch.randn(3, 18, 4).transpose(1, 2)               # [B, T, W] view, not contiguous
    assert not z.is_contiguous()
    mask = torch.tensor([[0b10]], dtype=torch.int32)        # head 1 of 2 (group = 9)
    rv = torch.tensor([0, -1, 0])
    want = masked_ablate_reference(z, rv, mask, mode="zero", group=9)
    out = masked_ablate(z, rv, mask, mode="zero", group=9, inplace=True, impl=impl)
    assert out is z
    torch.testing.assert_close(z, want, atol=0, rtol=0)


BAD = shared_bad("x", "[B, T, W]") + [  # (overrides of the good call, error fragment)
    (dict(row_variant=torch.tensor([-2, 0])), "row_variant values"),
    (dict(mask=torch.zeros(2, 1, dtype=torch.long)), "mask must be .* int32"),
    (dict(mask=torch.zeros(2, 0, dtype=torch.int32)), "mask has 0 words .* need 1"),
    (dict(group=3), "W = 8 is not divisible by group = 3"),
    (dict(group=0), "group must be an int >= 1"),
    (dict(mode="drop"), "mode must be one of"),
    (dict(mode="mean"), "mode 'mean' needs a fill tensor"),
    (dict(mode="mean", fill=torch.zeros(7)), r"fill for mode 'mean' must have shape \(8,\)"),
    (dict(mode="patch", fill=torch.zeros(8)), r"must have shape \(2, 3, 8\)"),
    (dict(mode="mean", fill=torch.zeros(8, dtype=torch.long)), "fill must be floating point"),
    (dict(fill=torch.zeros(8)), "mode 'zero' takes no fill"),
    (dict(mode="scale"), "mode 'scale' needs fill = a python number"),
    (dict(mode="scale", fill=torch.tensor(2.0)), "mode 'scale' takes fill = a python number"),
    (dict(pos_start=torch.tensor([-1, 0])), "pos_start values"),
    (dict(mask=torch.zeros(2, 1, dtype=torch.int32, device="meta")), "mask is on meta"),
]


@pytest.mark.parametrize("override, match", BAD)
def test_bad_inputs(override, match):
    kw = dict(x=torch.randn(2, 3, 8), row_variant=torch.tensor([0, -1]),
              mask=torch.ones(2, 1, dtype=torch.int32), mode="zero", fill=None, group=1,
              pos_start=None)
    kw.update(override)
    with pytest.raises(ValueError, match=match):
        masked_ablate(kw.pop("x"), kw.pop("row_variant"), kw.pop("mask"), **kw)


CPP_BAD = [  # direct calls to the C++ op: (args after x, error fragment)
    (("zero", None, 1.0, 1, None), None),
    (("drop", None, 1.0, 1, None), "mode must be one of"),
    (("zero", None, 1.0, 3, None), "W = 8 is not divisible by group = 3"),
    (("mean", None, 1.0, 1, None), "needs a fill tensor"),
    (("mean", torch.zeros(8, dtype=torch.float64), 1.0, 1, None), "fill must have x's dtype"),
    (("zero", None, 1.0, 1, torch.tensor([0, 9])), r"pos_start\[1\] = 9 must lie in \[0, T = 3\]"),
]


@needs_cpp
@pytest.mark.parametrize("args, match", CPP_BAD)
def test_cpp_op_errors(args, match):
    x, rv, mask = torch.randn(2, 3, 8), torch.tensor([0, -1]), torch.ones(2, 1, dtype=torch.int32)
    op = torch.ops.emofast.masked_ablate
    if match is None:
        op(x, rv, mask, *args)  # the good call runs
        with pytest.raises(RuntimeError, match=r"row_variant\[0\] = 5 is out of range"):
            op(x, torch.tensor([5, 0]), mask, *args)
        with pytest.raises(RuntimeError, match="mask must be int32"):
            op(x, rv, mask.long(), *args)
        return
    with pytest.raises(RuntimeError, match=match):
        op(x, rv, mask, *args)


def test_autograd_rule():
    x = torch.randn(2, 3, 8, requires_grad=True)
    rv, mask = torch.tensor([0, -1]), torch.full((1, 1), 0b1010, dtype=torch.int32)
    masked_ablate(x, rv, mask, mode="scale", fill=3.0).sum().backward()  # impl=None -> torch
    want = torch.ones(2, 3, 8)
    want[0, :, [1, 3]] = 3.0
    torch.testing.assert_close(x.grad, want)
    with pytest.raises(RuntimeError, match="forward-only"):
        masked_ablate(x, rv, mask, mode="zero", impl="triton")


@needs_cpp
def test_opcheck():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 64, generator=g)
    rv, pos = torch.tensor([1, 0]), torch.tensor([1, 3])
    mask = torch.randint(-2**31, 2**31 - 1, (2, 2), generator=g, dtype=torch.int32)
    fill = torch.randn(2, 3, 64, generator=g)
    for args in [(x, rv, mask, "zero", None, 1.0, 1, None),
                 (x, rv, mask, "patch", fill, 1.0, 8, pos)]:
        torch.library.opcheck(torch.ops.emofast.masked_ablate.default, args)
        torch.library.opcheck(torch.ops.emofast.masked_ablate_.default, (x.clone(),) + args[1:])


def test_impl_asked_for_by_name(monkeypatch):
    x, rv, mask = torch.randn(2, 3, 8), torch.tensor([0, -1]), torch.ones(1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="impl must be one of"):
        masked_ablate(x, rv, mask, mode="zero", impl="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        masked_ablate(x, rv, mask, mode="zero", impl="triton")
