"""GPU timings of sae_decode and sae_encode (Triton) against the torch baselines.

Wired into bench/kernels/gpu_kernels.py and bench/gpu_check.py.

Shapes (GPU): d_model 4096, d_sae 65536 (16x), k 64, 8192 tokens; `small`: the smoke run's. Each row is
{op, impl, ms, GB_s or TFLOP_s, baseline, ratio_vs_baseline} with ratio = baseline ms / ms (> 1:
faster than the baseline measured in the same run).
  sae_decode:  bytes = the k used rows of W_dec per token + indices (int64) and values + output;
               baseline "dense" = scatter the codes into a dense [N, d_sae] matrix, then matmul
               (what SAELens does); also "embedding_bag" (sparsify's eager path, our reference).
               "triton" is the public function (argument checks incl. one host sync for the
               index range), "triton-kernel" the bare launch. fwd+bwd rows time forward plus
               grad_values and grad_W_dec (Triton atomics vs embedding_bag's backward).
  sae_encode:  TFLOP_s = 2 N d_model d_sae / time; baseline "gemm" = x @ W_enc alone (the floor:
               every encoder must do it). relu: fused bias + ReLU epilogue vs the reference
               (matmul, add, relu). topk: both Triton top-k modes, "triton" (fused epilogue then
               torch.topk) and "triton-tile" (per-tile top-k in the epilogue), vs the reference.
"""
from __future__ import annotations

import torch

from timing import median_ms

GPU_SHAPE, SMALL_SHAPE = (8192, 4096, 65536, 64), (16, 48, 160, 2)   # N, d_model, d_sae, k


def _row(op, impl, ms, baseline, baseline_ms, *, nbytes=None, flops=None) -> dict:
    row = {"op": op, "impl": impl, "ms": ms, "baseline": baseline,
           "ratio_vs_baseline": baseline_ms / ms}
    if nbytes is not None:
        row.update(GB_s=nbytes / (ms * 1e-3) / 1e9, bytes=nbytes)
    if flops is not None:
        row.update(TFLOP_s=flops / (ms * 1e-3) / 1e12)
    return row


def _time_all(fns: dict, device) -> dict:
    return {name: median_ms(fn, device) for name, fn in fns.items()}


def _bench_decode(device, dtype, g, shape) -> list[dict]:
    import torch.nn.functional as F

    from emofast.kernels import sae_decode, sae_decode_reference
    from emofast.kernels.triton.sae_decode import _decode_fwd_triton

    N, D_MODEL, D_SAE, K = shape

    elem = torch.finfo(dtype).bits // 8
    indices = torch.randint(0, D_SAE, (N, K), generator=g).to(device)          # [N, k]
    values = torch.rand(N, K, generator=g).to(device, dtype)                   # [N, k]
    W_dec = (torch.randn(D_SAE, D_MODEL, generator=g) * 0.02).to(device, dtype)
    b_dec = torch.zeros(D_MODEL, device=device, dtype=dtype)

    def dense():
        codes = torch.zeros(N, D_SAE, device=device, dtype=dtype).scatter_(1, indices, values)
        return codes @ W_dec + b_dec

    fwd = {
        "dense": dense,
        "embedding_bag": lambda: sae_decode_reference(indices, values, W_dec, b_dec),
        "triton": lambda: sae_decode(indices, values, W_dec, b_dec, impl="triton"),
        "triton-kernel": lambda: _decode_fwd_triton(indices, values, W_dec, b_dec),
    }
    nbytes = N * K * D_MODEL * elem + N * K * (8 + elem) + N * D_MODEL * elem
    ms = _time_all(fwd, device)
    out = [_row("sae_decode", impl, t, "dense", ms["dense"], nbytes=nbytes)
           for impl, t in ms.items()]

    grad_out = torch.randn(N, D_MODEL, device=device, dtype=dtype)
    v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (v, W), grad_out)

    bwd = {
        "embedding_bag": fwd_bwd(lambda: F.embedding_bag(indices, W, per_sample_weights=v,
                                                         mode="sum")),
        "triton": fwd_bwd(lambda: sae_decode(indices, v, W, impl="triton")),
    }
    ms = _time_all(bwd, device)
    # forward bytes, plus backward: grad_out, the k rows again, grad_values and the used rows of
    # grad_W_dec (fp32 read-modify-write)
    nbytes_fb = nbytes + N * D_MODEL * elem + N * K * D_MODEL * (elem + 8) + N * K * elem
    out += [_row("sae_decode fwd+bwd", impl, t, "embedding_bag", ms["embedding_bag"],
                 nbytes=nbytes_fb) for impl, t in ms.items()]
    return out


def _bench_encode(device, dtype, g, shape) -> list[dict]:
    import emofast.kernels.triton.sae_encode as triton_face
    from emofast.kernels import sae_encode, sae_encode_reference

    N, D_MODEL, D_SAE, K = shape

    x = torch.randn(N, D_MODEL, generator=g).to(device, dtype)                  # [N, d_model]
    W_enc = (torch.randn(D_MODEL, D_SAE, generator=g) / D_MODEL**0.5).to(device, dtype)
    b_enc = (torch.randn(D_SAE, generator=g) * 0.1).to(device, dtype)
    b_dec = (torch.randn(D_MODEL, generator=g) * 0.1).to(device, dtype)
    flops = 2 * N * D_MODEL * D_SAE
    ms_gemm = _time_all({"gemm": lambda: x @ W_enc}, device)["gemm"]
    out = [_row("sae_encode", "gemm", ms_gemm, "gemm", ms_gemm, flops=flops)]

    relu = {
        "torch": lambda: sae_encode_reference(x, W_enc, b_enc, activation="relu",
                                                  b_dec=b_dec),
        "triton": lambda: sae_encode(x, W_enc, b_enc, activation="relu", b_dec=b_dec,
                                         impl="triton"),
    }
    out += [_row("sae_encode[relu]", impl, t, "gemm", ms_gemm, flops=flops)
            for impl, t in _time_all(relu, device).items()]

    def topk():
        return sae_encode(x, W_enc, b_enc, activation="topk", k=K, b_dec=b_dec,
                              impl="triton")

    ms = _time_all({"torch": lambda: sae_encode_reference(x, W_enc, b_enc, activation="topk",
                                                              k=K, b_dec=b_dec),
                    "triton": topk}, device)
    saved = triton_face.TOPK_MODE
    try:
        triton_face.TOPK_MODE = "tile"
        ms.update(_time_all({"triton-tile": topk}, device))
    finally:
        triton_face.TOPK_MODE = saved
    out += [_row(f"sae_encode[topk k={K}]", impl, t, "gemm", ms_gemm, flops=flops)
            for impl, t in ms.items()]
    return out


def bench_sae_ops(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                  small: bool = False) -> list[dict]:
    """Time sae_decode and sae_encode against their baselines; one row per op x impl."""
    g = torch.Generator().manual_seed(0)
    shape = SMALL_SHAPE if small else GPU_SHAPE
    rows = _bench_decode(device, dtype, g, shape)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rows += _bench_encode(device, dtype, g, shape)
    return rows
