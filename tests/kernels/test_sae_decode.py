"""sae_decode: every face (triton via the interpreter, cpp, torch) against the reference, the
reference against a dense scatter-then-matmul oracle in float64, gradients against autograd of
the reference, the edge cases of the contract, and opcheck on the C++ ops."""
import pytest
import torch

from emofast.kernels import cpp
from emofast.kernels.ops.sae_decode import sae_decode, sae_decode_reference

HAS_CPP = cpp.has("sae_decode")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="emofast._C (C++ extension) not built")
IMPLS = ["triton", pytest.param("cpp", marks=needs_cpp), "torch"]

# (dtype, atol, rtol). The fused faces accumulate in fp32 and round once to the dtype; they differ
# from the reference by the order of the fp32 adds (a few fp32 ulps: atol 1e-5, rtol 1.3e-6 is
# torch's fp32 default) and, for bf16/fp16, by one rounding to the dtype (2**-7 relative for bf16,
# 2**-10 for fp16; the Triton interpreter truncates where torch rounds to nearest). With b_dec the
# reference rounds twice (embedding_bag's output, then + b_dec), which near cancellation costs an
# absolute ulp of the pre-bias sum: make_case keeps |sum| < 4, so atol is the ulp at [2, 4):
# 2**-6 for bf16, 2**-9 for fp16.
DTYPES = [(torch.float32, 1e-5, 1.3e-6), (torch.bfloat16, 2**-6, 2**-7),
          (torch.float16, 2**-9, 2**-10)]
# (N, d_model, d_sae, k, bias, index dtype): non-powers of two everywhere; the last shape spans
# two column blocks and two k blocks of the interpreter's tiles (512 columns, 64 rows)
SHAPES = [(7, 41, 97, 1, True, torch.int64), (7, 41, 97, 3, False, torch.int32),
          (7, 41, 97, 8, True, torch.int32), (3, 600, 97, 70, True, torch.int64)]


def make_case(N, d_model, d_sae, k, dtype, bias=True, index_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, d_sae, (N, k), generator=g).to(index_dtype)
    values = (torch.rand(N, k, generator=g) * 2 - 1).to(dtype)
    W_dec = (torch.randn(d_sae, d_model, generator=g) * 0.2).to(dtype)
    b_dec = (torch.randn(d_model, generator=g) * 0.5).to(dtype) if bias else None
    assert dense_oracle(indices, values, W_dec, None).abs().max() < 4  # see DTYPES
    return indices, values, W_dec, b_dec


def dense_oracle(indices, values, W_dec, b_dec):
    """Scatter the k values into a dense [N, d_sae] code (duplicates add), then matmul: float64."""
    N, d_sae = indices.shape[0], W_dec.shape[0]
    dense = torch.zeros(N, d_sae, dtype=torch.float64)
    dense.index_put_((torch.arange(N)[:, None].expand_as(indices), indices.long()),
                     values.double(), accumulate=True)
    out = dense @ W_dec.double()
    return out + b_dec.double() if b_dec is not None else out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("N, d_model, d_sae, k, bias, index_dtype", SHAPES)
def test_forward_matches_reference(impl, dtype, atol, rtol, N, d_model, d_sae, k, bias,
                                   index_dtype):
    case = make_case(N, d_model, d_sae, k, dtype, bias, index_dtype)
    out = sae_decode(*case, impl=impl)
    assert out.shape == (N, d_model) and out.dtype == dtype
    torch.testing.assert_close(out, sae_decode_reference(*case), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_reference_matches_dense_oracle(dtype, atol, rtol):
    case = make_case(9, 41, 97, 8, dtype)
    # the oracle is exact (float64); the reference rounds once to the dtype: same tolerances
    torch.testing.assert_close(sae_decode_reference(*case).double(), dense_oracle(*case),
                               atol=atol, rtol=rtol)


# Gradients. fp32: as in the forward. bf16: the faces accumulate in fp32 and round once, while
# embedding_bag's bf16 backward rounds partial sums of grad_W_dec to bf16 (several ulps off), so
# bf16 gradients are compared with autograd of the reference run in fp32 on the same bf16-exact
# inputs: one bf16 rounding, rtol 2**-7; atol for entries near zero (fp32 order differences).
# (The torch face *is* embedding_bag, so it is checked in fp32 only.)
GRAD_CASES = [
    ("triton", torch.float32, 1e-5, 1.3e-6),
    pytest.param("cpp", torch.float32, 1e-5, 1.3e-6, marks=needs_cpp),
    ("torch", torch.float32, 1e-5, 1.3e-6),
    ("triton", torch.bfloat16, 1e-3, 2**-7),
    pytest.param("cpp", torch.bfloat16, 1e-3, 2**-7, marks=needs_cpp)]


@pytest.mark.parametrize("impl, dtype, atol, rtol", GRAD_CASES)
def test_gradients_match_reference(impl, dtype, atol, rtol):
    # 40 tokens x 8 latents out of 23: most rows of W_dec are hit by several tokens
    indices, values, W_dec, b_dec = make_case(40, 41, 23, 8, dtype)
    indices[0, 1] = indices[0, 0]  # and one duplicate inside a row
    grad_out = torch.randn(40, 41, generator=torch.Generator().manual_seed(1)).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (values, W_dec, b_dec)]
    sae_decode(indices, *leaves, impl=impl).backward(grad_out)
    ref = [t.float().requires_grad_() for t in (values, W_dec, b_dec)]
    sae_decode_reference(indices, *ref).backward(grad_out.float())
    for name, a, b in zip(("values", "W_dec", "b_dec"), leaves, ref):
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.float(), b.grad, atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_values_only(impl):
    """A frozen decoder (steering over latent values): only grad_values is computed."""
    indices, values, W_dec, _ = make_case(7, 41, 97, 3, torch.float32)
    v = values.clone().requires_grad_()
    sae_decode(indices, v, W_dec, impl=impl).sum().backward()
    expected = W_dec.sum(1)[indices]  # <1, W_dec[i]>
    torch.testing.assert_close(v.grad, expected, atol=1e-5, rtol=1.3e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_duplicate_indices_in_a_row_add(impl):
    """Documented: (i, a) and (i, b) in one row decode to (a + b) * W_dec[i]; grads accumulate."""
    W_dec = torch.randn(5, 6)
    indices = torch.tensor([[3, 3, 1]])
    values = torch.tensor([[0.5, 2.0, -1.0]], requires_grad=True)
    W = W_dec.clone().requires_grad_()
    out = sae_decode(indices, values, W, impl=impl)
    torch.testing.assert_close(out[0], 2.5 * W_dec[3] - W_dec[1])
    out.sum().backward()
    torch.testing.assert_close(W.grad[3], torch.full((6,), 2.5))
    torch.testing.assert_close(W.grad[1], torch.full((6,), -1.0))
    torch.testing.assert_close(W.grad[0], torch.zeros(6))
    torch.testing.assert_close(values.grad[0], W_dec[[3, 3, 1]].sum(1))


@pytest.mark.parametrize("impl", IMPLS)
def test_leading_dims(impl):
    indices, values, W_dec, b_dec = make_case(6, 41, 97, 3, torch.float32)
    out = sae_decode(indices.view(2, 3, 3), values.view(2, 3, 3), W_dec, b_dec, impl=impl)
    assert out.shape == (2, 3, 41)
    torch.testing.assert_close(out.view(6, 41), sae_decode_reference(indices, values, W_dec, b_dec))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [-1, 97])
def test_index_out_of_range_raises(impl, bad):
    indices, values, W_dec, b_dec = make_case(7, 41, 97, 3, torch.float32)
    indices[2, 1] = bad
    with pytest.raises(IndexError, match=r"\[0, d_sae = 97\)"):
        sae_decode(indices, values, W_dec, b_dec, impl=impl)


def test_bad_arguments_raise_clear_errors():
    indices, values, W_dec, b_dec = make_case(7, 41, 97, 3, torch.float32)
    with pytest.raises(TypeError, match="values has dtype torch.bfloat16 but W_dec has"):
        sae_decode(indices, values.bfloat16(), W_dec)
    with pytest.raises(TypeError, match="b_dec has dtype"):
        sae_decode(indices, values, W_dec, b_dec.half())
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        sae_decode(indices.float(), values, W_dec)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        sae_decode(indices, values.double(), W_dec.double())
    with pytest.raises(ValueError, match="values must have the shape of indices"):
        sae_decode(indices, values[:, :2], W_dec)
    with pytest.raises(ValueError, match=r"b_dec must be \[d_model\] = \[41\]"):
        sae_decode(indices, values, W_dec, b_dec[:40])
    with pytest.raises(ValueError, match="k >= 1"):
        sae_decode(indices[:, :0], values[:, :0], W_dec)
    with pytest.raises(ValueError, match="W_dec is on meta but indices are on cpu"):
        sae_decode(indices, values, W_dec.to("meta"))
    with pytest.raises(RuntimeError, match="impl='cpp' runs on CPU tensors"):
        sae_decode(indices.to("meta"), values.to("meta"), W_dec.to("meta"), impl="cpp")


@needs_cpp
def test_cpp_op_checks_its_own_arguments():
    """Called directly, torch.ops.emofast.sae_decode validates too (TORCH_CHECK)."""
    indices, values, W_dec, _ = make_case(7, 41, 97, 3, torch.float32)
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, d_sae = 97\)"):
        torch.ops.emofast.sae_decode(indices + 97, values, W_dec, None)
    with pytest.raises(RuntimeError, match="values and W_dec must have the same dtype"):
        torch.ops.emofast.sae_decode(indices, values.half(), W_dec, None)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cpp_ops(dtype):
    cpp.ops()  # loads the extension and registers its fake kernels and autograd
    indices, values, W_dec, b_dec = make_case(5, 41, 23, 3, dtype, index_dtype=torch.int32)
    args = (indices, values.requires_grad_(), W_dec.requires_grad_(), b_dec.requires_grad_())
    torch.library.opcheck(torch.ops.emofast.sae_decode.default, args)
    grad_out = torch.randn(5, 41).to(dtype)
    for need_values, need_w in ((True, True), (True, False)):
        torch.library.opcheck(torch.ops.emofast.sae_decode_backward.default,
                              (grad_out, indices, values.detach(), W_dec.detach(), need_values,
                               need_w))
