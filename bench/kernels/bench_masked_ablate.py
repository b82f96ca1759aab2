"""CPU benchmark: the masked_ablate C++ op against the vectorised torch reference (the baseline).

    .venv/bin/python -m pytest bench/kernels/bench_masked_ablate.py --benchmark-only -q

SmolLM2-135M shapes: MLP activations (d_mlp 1536, neuron-level, group 1) and attention z
(H 9 x d_head 64 = 576, head-level, group 64); B=64 rows, T=32 positions, V=64 variants, fp32
(the CPU dtype). Both faces get the same inputs and sit in one benchmark group, so the table's
relative column is the speed-up. Inputs: ~10% of units per variant, rows -1 or a random
variant, pos_start random in [0, T].
"""
import functools

import pytest
import torch

from emofast.kernels.ops.masked_ablate import masked_ablate, masked_ablate_reference
from faces import faces, run_face

B, T, V = 64, 32, 64
CASES = {  # name: (W, group, mode, dtype)
    "mlp-zero": (1536, 1, "zero", torch.float32),
    "mlp-scale": (1536, 1, "scale", torch.float32),
    "heads-patch": (576, 64, "patch", torch.float32),
    "mlp-mean-bf16": (1536, 1, "mean", torch.bfloat16),
}


@functools.cache
def inputs(case: str):
    W, group, mode, dtype = CASES[case]
    g = torch.Generator().manual_seed(0)
    n_units = W // group
    bits = torch.rand(V, (n_units + 31) // 32 * 32, generator=g) < 0.1             # [V, units]
    weights = 2 ** torch.arange(32, dtype=torch.int64)
    mask = (bits.view(V, -1, 32).long() * weights).sum(-1)                        # [V, n_words]
    mask = torch.where(mask >= 2**31, mask - 2**32, mask).to(torch.int32)
    x = torch.randn(B, T, W, generator=g).to(dtype)
    row_variant = torch.randint(-1, V, (B,), generator=g)
    pos_start = torch.randint(0, T + 1, (B,), generator=g)
    fill = {"zero": None, "scale": 0.5, "mean": torch.randn(W, generator=g).to(dtype),
            "patch": torch.randn(B, T, W, generator=g).to(dtype)}[mode]
    kw = dict(mode=mode, fill=fill, group=group, pos_start=pos_start)
    return (x, row_variant, mask), kw


@pytest.mark.parametrize("impl", faces("masked_ablate"))
@pytest.mark.parametrize("case", list(CASES))
def test_masked_ablate(benchmark, case, impl):
    out, want = run_face(benchmark, f"masked_ablate {case} B={B} T={T} V={V}", impl,
                         masked_ablate, masked_ablate_reference, *inputs(case))
    torch.testing.assert_close(out, want, atol=0, rtol=0)
