"""Every Triton face on the GPU, at shapes that fill it, against the torch reference (and the
float64 oracles of the per-op tests): the numbers a lent H100/H200 must reproduce before any
timing counts. `bench/gpu_check.py` runs these first; on CPU they run only in its smoke mode
(Triton's interpreter, small shapes)."""
import pytest
import torch

from emofast.kernels import dispatch, masked_ablate, sae_decode, sae_encode, steer_add
from emofast.kernels import masked_ablate_reference, sae_decode_reference, sae_encode_reference
from emofast.kernels import steer_add_reference
from test_masked_ablate import DTYPES as ABLATE_DTYPES, MODES, make_case as ablate_case
from test_sae_decode import DTYPES as DECODE_DTYPES, dense_oracle, make_case as decode_case
from test_sae_encode import DTYPES as ENCODE_DTYPES, check_topk, make_case as encode_case, pre64
from test_steer_add import DTYPES as STEER_DTYPES, make_case as steer_case

pytestmark = pytest.mark.gpu


def big(device) -> bool:
    return device.type == "cuda"


def on(device, *tensors):
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors]


def test_dispatch_picks_triton_on_cuda(gpu):
    if not big(gpu):
        pytest.skip("dispatch to Triton happens on CUDA tensors only")
    assert dispatch.choose("steer_add", torch.zeros(1, device=gpu), None) == "triton"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, atol, rtol", ABLATE_DTYPES, ids=["fp32", "bf16", "fp16"])
def test_masked_ablate(gpu, mode, dtype, atol, rtol):
    shape = (16, 128, 4096, 128, 64) if big(gpu) else (3, 5, 70, 7, 3)   # B, T, W, group, V
    x, rv, mask, fill, pos = on(gpu, *ablate_case(*shape, mode, dtype, seed=5))
    kw = dict(mode=mode, fill=fill, group=shape[3], pos_start=pos)
    want = masked_ablate_reference(x, rv, mask, **kw)
    torch.testing.assert_close(masked_ablate(x, rv, mask, impl="triton", **kw), want,
                               atol=atol, rtol=rtol)
    torch.testing.assert_close(masked_ablate(x.clone(), rv, mask, impl="triton", inplace=True,
                                             **kw), want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("scale", ["abs", "rms"])
@pytest.mark.parametrize("D", [4096, 12288], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("dtype, atol, rtol", STEER_DTYPES, ids=["fp32", "bf16", "fp16"])
def test_steer_add(gpu, scale, D, dtype, atol, rtol):
    B, T = (16, 64) if big(gpu) else (3, 4)
    D = D if big(gpu) else D // 512 + 1                # small: 9 and 25 features
    h, rv, dirs, alpha, pos = on(gpu, *steer_case(B, T, D, 5, dtype, seed=D))
    want = steer_add_reference(h, rv, dirs, alpha, pos_start=pos, scale=scale)
    got = steer_add(h, rv, dirs, alpha, pos_start=pos, scale=scale, impl="triton")
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DECODE_DTYPES, ids=["fp32", "bf16", "fp16"])
def test_sae_decode_forward_and_backward(gpu, dtype, atol, rtol):
    N, d_model, d_sae, k = (2048, 1024, 16384, 64) if big(gpu) else (5, 41, 97, 6)
    idx, values, W_dec, b_dec = decode_case(N, d_model, d_sae, k, dtype, seed=3)
    want64 = dense_oracle(idx, values, W_dec, b_dec)
    idx, values, W_dec, b_dec = on(gpu, idx, values, W_dec, b_dec)
    out = sae_decode(idx, values, W_dec, b_dec, impl="triton")
    torch.testing.assert_close(out, sae_decode_reference(idx, values, W_dec, b_dec), atol=atol,
                               rtol=rtol)
    torch.testing.assert_close(out.double().cpu(), want64, atol=2 * atol, rtol=2 * rtol)
    if dtype != torch.float32:
        return  # gradients: checked in fp32, where the reference's backward is exact enough
    v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
    g = torch.randn(N, d_model, device=gpu, dtype=dtype)
    got = torch.autograd.grad(sae_decode(idx, v, W, impl="triton"), (v, W), g)
    want = torch.autograd.grad(sae_decode_reference(idx, v, W), (v, W), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype, atol, rtol", ENCODE_DTYPES, ids=["fp32", "bf16", "fp16"])
def test_sae_encode_dense_topk_and_gradients(gpu, dtype, atol, rtol):
    N, d_model, d_sae, k = (512, 1024, 8192, 64) if big(gpu) else (9, 41, 97, 5)
    x, W_enc, b_enc, b_dec = encode_case(N, d_model, d_sae, dtype, seed=7)
    pre = pre64(x, W_enc, b_enc, b_dec)
    x, W_enc, b_enc, b_dec = on(gpu, x, W_enc, b_enc, b_dec)
    relu = sae_encode(x, W_enc, b_enc, activation="relu", b_dec=b_dec, impl="triton")
    torch.testing.assert_close(relu, sae_encode_reference(x, W_enc, b_enc, activation="relu",
                                                          b_dec=b_dec), atol=atol, rtol=rtol)
    top = sae_encode(x, W_enc, b_enc, activation="topk", k=k, b_dec=b_dec, impl="triton")
    ref = sae_encode_reference(x, W_enc, b_enc, activation="topk", k=k, b_dec=b_dec)
    check_topk(type(top)(top.values.cpu(), top.indices.cpu()),
               type(ref)(ref.values.cpu(), ref.indices.cpu()), pre, k, atol, rtol,
               relu_after=True)
    if dtype != torch.float32:
        return
    leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc, b_dec)]
    g = torch.randn(N, d_sae, device=gpu)
    got = torch.autograd.grad(sae_encode(leaves[0], leaves[1], leaves[2], activation="relu",
                                         b_dec=leaves[3], impl="triton"), leaves, g)
    want = torch.autograd.grad(sae_encode_reference(leaves[0], leaves[1], leaves[2],
                                                    activation="relu", b_dec=leaves[3]),
                               leaves, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
