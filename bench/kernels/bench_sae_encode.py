"""CPU benchmark: the sae_encode C++ op against the torch reference (the baseline).

    .venv/bin/python -m pytest bench/kernels/bench_sae_encode.py --benchmark-only -q

SmolLM2-135M SAE shapes: d_model 576, d_sae 4608 (8x), N 512 tokens, fp32, b_dec given.
relu and jumprelu (dense [N, d_sae] out) and topk with k 32 (EncoderOutput). Both faces run the
same MKL/oneDNN GEMM (2 N d_model d_sae = 2.7 GFLOP), which dominates: the C++ op wins only the
epilogue (bias + activation + top-k fused into one pass with a size-k heap per row, instead of
separate add / relu / torch.topk passes and allocations). The "gemm" row, x @ W_enc alone, is the
floor any encoder pays. Faces share a benchmark group, so the relative column is the speed-up.
"""
import functools

import pytest
import torch

from emofast.kernels.ops.sae_encode import sae_encode, sae_encode_reference
from faces import faces

N, K, D_MODEL, D_SAE = 512, 32, 576, 4608
IMPLS = faces("sae_encode")
CASES = {"relu": {}, "jumprelu": {}, "topk": dict(k=K)}


@functools.cache
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_MODEL, generator=g)                                  # [N, d_model]
    W_enc = torch.randn(D_MODEL, D_SAE, generator=g) / D_MODEL**0.5          # [d_model, d_sae]
    b_enc = torch.randn(D_SAE, generator=g) * 0.1                            # [d_sae]
    b_dec = torch.randn(D_MODEL, generator=g) * 0.1                          # [d_model]
    threshold = torch.rand(D_SAE, generator=g) * 0.5                         # [d_sae]
    return x, W_enc, b_enc, b_dec, threshold


def kwargs(case):
    x, W_enc, b_enc, b_dec, threshold = inputs()
    kw = dict(activation=case, b_dec=b_dec, **CASES[case])
    if case == "jumprelu":
        kw["threshold"] = threshold
    return (x, W_enc, b_enc), kw


@pytest.mark.parametrize("impl", IMPLS + ["gemm"])
@pytest.mark.parametrize("case", list(CASES))
def test_sae_encode(benchmark, case, impl):
    benchmark.group = f"sae_encode {case} fp32 N={N} d_model={D_MODEL} d_sae={D_SAE}" + (
        f" k={K}" if case == "topk" else "")
    args, kw = kwargs(case)
    if impl == "gemm":
        benchmark(torch.matmul, args[0], args[1])
        return
    if impl == "torch":
        out = benchmark(sae_encode_reference, *args, **kw)
    else:
        out = benchmark(sae_encode, *args, impl=impl, **kw)
    ref = sae_encode_reference(*args, **kw)
    if case == "topk":
        out, ref = out.values, ref.values
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1.3e-6)
