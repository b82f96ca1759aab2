"""CPU benchmark: the sae_decode C++ op against the torch reference (the baseline).

    .venv/bin/python -m pytest bench/kernels/bench_sae_decode.py --benchmark-only -q

SmolLM2-135M SAE shapes: d_model 576, d_sae 4608 (8x), k 32 active latents, N 512 tokens.
The reference is F.embedding_bag with per-sample weights (sparsify's eager decode; on CPU it runs
fbgemm's JIT-compiled EmbeddingSpMDM kernel) plus the bias: the fair baseline, far faster than
gather + einsum or a dense scatter + matmul. Both faces get the same inputs and sit in one
benchmark group, so the table's relative column is the speed-up. "fwd+bwd" adds grad_values and
grad_W_dec (embedding_bag's backward vs the C++ backward op).
"""
import functools

import pytest
import torch

from emofast.kernels.ops.sae_decode import sae_decode, sae_decode_reference
from faces import faces

N, K, D_MODEL, D_SAE = 512, 32, 576, 4608
IMPLS = faces("sae_decode")


@functools.cache
def inputs(dtype):
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, D_SAE, (N, K), generator=g)                   # [N, k]
    values = torch.rand(N, K, generator=g).to(dtype)                          # [N, k]
    W_dec = (torch.randn(D_SAE, D_MODEL, generator=g) * 0.05).to(dtype)      # [d_sae, d_model]
    b_dec = (torch.randn(D_MODEL, generator=g) * 0.1).to(dtype)              # [d_model]
    return indices, values, W_dec, b_dec


def run(impl, indices, values, W_dec, b_dec):
    if impl == "torch":
        return sae_decode_reference(indices, values, W_dec, b_dec)
    return sae_decode(indices, values, W_dec, b_dec, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sae_decode_fwd(benchmark, dtype, impl):
    benchmark.group = f"sae_decode fwd {str(dtype)[6:]} N={N} k={K} d_model={D_MODEL} d_sae={D_SAE}"
    args = inputs(dtype)
    out = benchmark(run, impl, *args)
    tol = dict(atol=1e-5, rtol=1.3e-6) if dtype == torch.float32 else dict(atol=2**-6, rtol=2**-7)
    torch.testing.assert_close(out, sae_decode_reference(*args), **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_sae_decode_fwd_bwd(benchmark, impl):
    benchmark.group = f"sae_decode fwd+bwd fp32 N={N} k={K} d_model={D_MODEL} d_sae={D_SAE}"
    indices, values, W_dec, b_dec = inputs(torch.float32)
    v, W, b = (t.clone().requires_grad_() for t in (values, W_dec, b_dec))
    grad_out = torch.randn(N, D_MODEL, generator=torch.Generator().manual_seed(1))

    def step():
        return torch.autograd.grad(run(impl, indices, v, W, b), (v, W, b), grad_out)

    grads = benchmark(step)
    ref = torch.autograd.grad(sae_decode_reference(indices, v, W, b), (v, W, b), grad_out)
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-5)
