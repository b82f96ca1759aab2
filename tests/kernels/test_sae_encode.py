"""sae_encode: every face (triton via the interpreter, cpp, torch) against the reference, the
reference against plain float64 matmul + torch.topk, gradients against autograd of the reference,
the edge cases of the contract (k = 1, ties, bad arguments), and opcheck on the C++ ops."""

import pytest
import torch

import emofast.kernels.triton.sae_encode as sae_encode_triton  # not shadowed: TOPK_MODE
from emofast.kernels import cpp
from emofast.kernels.ops.sae_encode import EncoderOutput, sae_encode, sae_encode_reference

HAS_CPP = cpp.has("sae_encode")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="emofast._C (C++ extension) not built")
IMPLS = ["triton", pytest.param("cpp", marks=needs_cpp), "torch"]

# (dtype, atol, rtol). Inputs give pre ~ N(0, 1) (|pre| < 8). fp32: the faces sum d_model
# products in different orders and Triton folds b_dec into the bias (x @ W - b_dec @ W): a few
# fp32 ulps of the terms, far below atol 1e-5 / rtol 1.3e-6 (torch's fp32 default).
# bf16 / fp16: the reference rounds x - b_dec, x @ W_enc and + b_enc to the dtype (three
# roundings), the C++ face the first two, Triton only the output: up to ~2 ulps of |pre| < 8
# apart, 2**-4 for bf16 and 2**-7 for fp16 in absolute terms, rtol one ulp of the dtype.
DTYPES = [(torch.float32, 1e-5, 1.3e-6), (torch.bfloat16, 2**-4, 2**-7),
          (torch.float16, 2**-7, 2**-10)]
# (N, d_model, d_sae): non-powers of two; the second spans 2 x 3 output tiles and 2 K steps of
# the interpreter's blocks (64 x 128 x 128)
SHAPES = [(7, 41, 97), (70, 150, 300)]


def make_case(N, d_model, d_sae, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_model, generator=g)
    W_enc = torch.randn(d_model, d_sae, generator=g) / d_model**0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.1
    b_dec = torch.randn(d_model, generator=g) * 0.3
    return [t.to(dtype) for t in (x, W_enc, b_enc, b_dec)]


def pre64(x, W_enc, b_enc, b_dec):
    """The independent oracle: plain float64 matmul."""
    return (x.double() - b_dec.double()) @ W_enc.double() + b_enc.double()


def safe_threshold(pre, dtype):
    """Per-latent thresholds in the middle of the widest gap between the column's pre-activations
    (or below them), so rounding of pre cannot move an entry across its threshold."""
    col = pre.sort(dim=0).values  # [N, d_sae]
    cand = torch.cat([col[:1] - 1, col], dim=0)
    gaps = cand[1:] - cand[:-1]
    i = gaps.argmax(dim=0)
    thr = (cand.gather(0, i[None]) + cand.gather(0, (i + 1)[None]))[0] / 2
    return thr.to(dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("N, d_model, d_sae", SHAPES)
@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_dense_matches_reference(impl, dtype, atol, rtol, N, d_model, d_sae, activation):
    x, W_enc, b_enc, b_dec = make_case(N, d_model, d_sae, dtype)
    kw = dict(activation=activation, b_dec=b_dec)
    if activation == "jumprelu":
        kw["threshold"] = safe_threshold(pre64(x, W_enc, b_enc, b_dec), dtype)
    out = sae_encode(x, W_enc, b_enc, impl=impl, **kw)
    assert out.shape == (N, d_sae) and out.dtype == dtype
    torch.testing.assert_close(out, sae_encode_reference(x, W_enc, b_enc, **kw), atol=atol,
                               rtol=rtol)


def check_topk(res, ref, pre, k, atol, rtol, relu_after):
    """Values against the reference (sorted, so ties do not matter); indices: unique, and the
    oracle's pre-activations at them give the values."""
    assert isinstance(res, EncoderOutput) and res.values.shape == res.indices.shape
    assert res.indices.dtype == torch.int64
    torch.testing.assert_close(res.values, ref.values, atol=atol, rtol=rtol)
    assert (res.values[:, :-1] >= res.values[:, 1:]).all()  # descending
    assert all(len(set(row.tolist())) == k for row in res.indices)
    at = pre.gather(1, res.indices)
    kept = at.clamp_min(0) if relu_after else at
    torch.testing.assert_close(res.values.double(), kept, atol=atol, rtol=rtol, check_dtype=False)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("k", [1, 5, 97])
def test_topk_matches_reference(impl, dtype, atol, rtol, k):
    x, W_enc, b_enc, b_dec = make_case(7, 41, 97, dtype)
    ref = sae_encode_reference(x, W_enc, b_enc, activation="topk", k=k, b_dec=b_dec)
    res = sae_encode(x, W_enc, b_enc, activation="topk", k=k, b_dec=b_dec, impl=impl)
    check_topk(res, ref, pre64(x, W_enc, b_enc, b_dec), k, atol, rtol, relu_after=True)
    if dtype == torch.float32:  # no near-ties at fp32 precision in this data: the same latents
        assert torch.equal(res.indices.sort(1).values, ref.indices.sort(1).values)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_sparse_relu_jumprelu_keep_the_k_largest_activations(impl, activation):
    x, W_enc, b_enc, b_dec = make_case(7, 41, 97, torch.float32)
    pre = pre64(x, W_enc, b_enc, b_dec)
    kw = dict(activation=activation, k=8, sparse=True, b_dec=b_dec)
    if activation == "jumprelu":
        kw["threshold"] = safe_threshold(pre, torch.float32)
    ref = sae_encode_reference(x, W_enc, b_enc, **kw)
    res = sae_encode(x, W_enc, b_enc, impl=impl, **kw)
    dense = sae_encode_reference(x, W_enc, b_enc, **{**kw, "k": None, "sparse": False})
    torch.testing.assert_close(res.values, ref.values, atol=1e-5, rtol=1.3e-6)
    torch.testing.assert_close(res.values, dense.gather(1, res.indices), atol=1e-5, rtol=1.3e-6)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_reference_matches_float64_oracle(dtype, atol, rtol):
    x, W_enc, b_enc, b_dec = make_case(7, 41, 97, dtype)
    pre = pre64(x, W_enc, b_enc, b_dec)
    relu = sae_encode_reference(x, W_enc, b_enc, activation="relu", b_dec=b_dec)
    torch.testing.assert_close(relu.double(), pre.clamp_min(0), atol=atol, rtol=rtol)
    thr = safe_threshold(pre, dtype)
    jr = sae_encode_reference(x, W_enc, b_enc, activation="jumprelu", threshold=thr, b_dec=b_dec)
    torch.testing.assert_close(jr.double(), pre * (pre > thr.double()), atol=atol, rtol=rtol)
    top = sae_encode_reference(x, W_enc, b_enc, activation="topk", k=5, b_dec=b_dec)
    torch.testing.assert_close(top.values.double(), pre.topk(5).values.clamp_min(0), atol=atol,
                               rtol=rtol)


GRAD_CASES = [("relu", {}), ("jumprelu", {}), ("topk", dict(k=5)),
              ("relu", dict(k=5, sparse=True))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("activation, extra", GRAD_CASES, ids=["relu", "jumprelu", "topk",
                                                               "relu-sparse"])
@pytest.mark.parametrize("x_grad", [True, False], ids=["x-grad", "params-only"])
def test_gradients_match_reference(impl, activation, extra, x_grad):
    # fp32: the backward is the same torch ops on every face, so only the forward's mask/selection
    # could differ; inputs avoid near-ties (see safe_threshold), tolerances as for the forward.
    # params-only is SAE training: the C++ face then sums grad W_enc sparsely (top-k cases)
    x, W_enc, b_enc, b_dec = make_case(7, 41, 97, torch.float32)
    kw = dict(activation=activation, **extra)
    if activation == "jumprelu":
        kw["threshold"] = safe_threshold(pre64(x, W_enc, b_enc, b_dec), torch.float32)
    leaves = [t.clone().requires_grad_(x_grad or i > 0) for i, t in enumerate((x, W_enc, b_enc,
                                                                                b_dec))]
    ref_leaves = [t.clone().requires_grad_(x_grad or i > 0) for i, t in enumerate((x, W_enc,
                                                                                    b_enc, b_dec))]
    out = sae_encode(*leaves[:3], b_dec=leaves[3], impl=impl, **kw)
    ref = sae_encode_reference(*ref_leaves[:3], b_dec=ref_leaves[3], **kw)
    out, ref = (out.values, ref.values) if isinstance(ref, EncoderOutput) else (out, ref)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    ref.backward(grad)
    for name, a, b in zip(("x", "W_enc", "b_enc", "b_dec"), leaves, ref_leaves):
        assert (a.grad is None) == (b.grad is None) == (name == "x" and not x_grad)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1.3e-6, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ties_give_a_valid_top_k_set(impl):
    """Documented: with ties any valid top-k set; here 10 latents tie at 0.5 and k = 4."""
    x, W_enc, b_enc, _ = make_case(3, 41, 97, torch.float32)
    W_enc[:, :] = 0  # pre = b_enc exactly on every face
    b_enc = torch.linspace(-1, 0.4, 97)
    tied = torch.arange(20, 30)
    b_enc[tied] = 0.5
    res = sae_encode(x, W_enc, b_enc, activation="topk", k=4, impl=impl)
    torch.testing.assert_close(res.values, torch.full((3, 4), 0.5))
    assert all(set(row.tolist()) <= set(tied.tolist()) and len(set(row.tolist())) == 4
               for row in res.indices)


@pytest.mark.parametrize("impl", IMPLS)
def test_leading_dims(impl):
    x, W_enc, b_enc, b_dec = make_case(6, 41, 97, torch.float32)
    out = sae_encode(x.view(2, 3, 41), W_enc, b_enc, activation="relu", b_dec=b_dec, impl=impl)
    assert out.shape == (2, 3, 97)
    top = sae_encode(x.view(2, 3, 41), W_enc, b_enc, activation="topk", k=4, impl=impl)
    assert top.values.shape == top.indices.shape == (2, 3, 4)


def test_tile_topk_mode(monkeypatch):
    """The alternative Triton top-k (per-tile candidates in the GEMM epilogue) gives the same."""
    monkeypatch.setattr(sae_encode_triton, "TOPK_MODE", "tile")
    x, W_enc, b_enc, b_dec = make_case(7, 41, 300, torch.float32)  # 3 column tiles
    for k in (1, 5):  # k = 1 takes tl.topk's max path; the bitonic path is slow when interpreted
        res = sae_encode(x, W_enc, b_enc, activation="topk", k=k, b_dec=b_dec, impl="triton")
        ref = sae_encode_reference(x, W_enc, b_enc, activation="topk", k=k, b_dec=b_dec)
        check_topk(res, ref, pre64(x, W_enc, b_enc, b_dec), k, 1e-5, 1.3e-6, relu_after=True)
    with pytest.raises(ValueError, match="TOPK_MODE='tile' supports k <= 256"):
        sae_encode(x, W_enc, b_enc, activation="topk", k=257, impl="triton")


def test_bad_arguments_raise_clear_errors():
    x, W_enc, b_enc, b_dec = make_case(7, 41, 97, torch.float32)
    thr = torch.zeros(97)
    cases = [
        (ValueError, "activation must be one of", dict(activation="gelu")),
        (ValueError, "k must be an int in \\[1, d_sae = 97\\]", dict(activation="topk", k=98)),
        (ValueError, "k must be an int", dict(activation="topk", k=0)),
        (ValueError, "needs k", dict(activation="topk")),
        (ValueError, "needs k", dict(activation="relu", sparse=True)),
        (ValueError, "k is only used with", dict(activation="relu", k=3)),
        (ValueError, "jumprelu' needs threshold", dict(activation="jumprelu")),
        (ValueError, "threshold is only used by jumprelu", dict(activation="relu", threshold=thr)),
        (ValueError, "threshold must be \\[97\\]", dict(activation="jumprelu", threshold=thr[:5])),
        (ValueError, "b_dec must be \\[41\\]", dict(activation="relu", b_dec=b_dec[:3])),
        (TypeError, "b_dec has dtype torch.float16 but x has", dict(activation="relu",
                                                                    b_dec=b_dec.half())),
        (ValueError, "b_dec is on meta but x is on cpu", dict(activation="relu",
                                                              b_dec=b_dec.to("meta"))),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg):
            sae_encode(x, W_enc, b_enc, **kw)
    with pytest.raises(ValueError, match="need x \\[..., d_model\\] and W_enc"):
        sae_encode(x, W_enc.t(), b_enc, activation="relu")
    with pytest.raises(TypeError, match="W_enc has dtype torch.bfloat16"):
        sae_encode(x, W_enc.bfloat16(), b_enc, activation="relu")
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        sae_encode(x.double(), W_enc.double(), b_enc.double(), activation="relu")
    with pytest.raises(RuntimeError, match="impl='cpp' runs on CPU tensors"):
        sae_encode(*(t.to("meta") for t in (x, W_enc, b_enc)), activation="relu", impl="cpp")


@needs_cpp
def test_cpp_ops_check_their_own_arguments():
    x, W_enc, b_enc, _ = make_case(7, 41, 97, torch.float32)
    with pytest.raises(RuntimeError, match="k must be in \\[1, d_sae = 97\\]"):
        torch.ops.emofast.sae_encode_topk(x, W_enc, b_enc, None, None, "topk", 98)
    with pytest.raises(RuntimeError, match="jumprelu needs threshold"):
        torch.ops.emofast.sae_encode(x, W_enc, b_enc, None, None, "jumprelu")
    with pytest.raises(RuntimeError, match="W_enc must have the dtype of x"):
        torch.ops.emofast.sae_encode(x, W_enc.half(), b_enc, None, None, "relu")


@needs_cpp
def test_opcheck_cpp_ops():
    cpp.ops()  # loads the extension and registers its fake kernels and autograd
    x, W_enc, b_enc, b_dec = (t.requires_grad_() for t in make_case(5, 41, 23, torch.float32))
    thr = torch.full((23,), 0.05)
    torch.library.opcheck(torch.ops.emofast.sae_encode.default,
                          (x, W_enc, b_enc, b_dec, None, "relu"))
    torch.library.opcheck(torch.ops.emofast.sae_encode.default,
                          (x, W_enc, b_enc, None, thr, "jumprelu"))
    torch.library.opcheck(torch.ops.emofast.sae_encode_topk.default,
                          (x, W_enc, b_enc, b_dec, None, "topk", 4))


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_bias_gradients_accumulate_in_fp32(impl):
    """b_enc / b_dec sum N x k entries: in bf16 one slot would stall near 256 x an entry."""
    g = torch.Generator().manual_seed(0)
    N, d, m = 2048, 16, 8
    x = torch.randn(N, d, generator=g).bfloat16()
    W_enc = torch.randn(d, m, generator=g).bfloat16()
    b_enc = torch.zeros(m).bfloat16().requires_grad_()
    b_dec = torch.zeros(d).bfloat16().requires_grad_()
    out = sae_encode(x, W_enc, b_enc, activation="topk", k=m, b_dec=b_dec, impl=impl)
    grad = torch.rand(out.values.shape, generator=g).bfloat16()
    out.values.backward(grad)
    kept = (grad.double() * (out.values > 0))                       # [N, k]
    want = torch.zeros(m, dtype=torch.float64).index_add_(0, out.indices.reshape(-1),
                                                           kept.reshape(-1))
    torch.testing.assert_close(b_enc.grad.double(), want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(b_dec.grad.double(), -(W_enc.double() @ want), rtol=1e-2,
                               atol=0.5)
