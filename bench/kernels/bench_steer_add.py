"""CPU benchmark: the steer_add C++ op against the vectorised torch reference (the baseline).

    .venv/bin/python -m pytest bench/kernels/bench_steer_add.py --benchmark-only -q

SmolLM2-135M shapes: residual stream d_model 576, B=64 rows, T=32 positions, V=64 directions;
plain add and RMS-scaled add (fp32, the CPU dtype, and bf16). Both faces get the same inputs and
sit in one benchmark group, so the table's relative column is the speed-up. Rows are -1 or a
random variant, pos_start random in [0, T].
"""
import functools

import pytest
import torch

from emofast.kernels.ops.steer_add import steer_add, steer_add_reference
from faces import faces, run_face

B, T, V, D_MODEL = 64, 32, 64, 576
CASES = {  # name: (scale, dtype)
    "add": ("abs", torch.float32),
    "rms": ("rms", torch.float32),
    "rms-bf16": ("rms", torch.bfloat16),
}


@functools.cache
def inputs(case: str):
    scale, dtype = CASES[case]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(B, T, D_MODEL, generator=g).to(dtype)
    directions = torch.randn(V, D_MODEL, generator=g)
    row_variant = torch.randint(-1, V, (B,), generator=g)
    alpha = torch.randn(B, generator=g)
    pos_start = torch.randint(0, T + 1, (B,), generator=g)
    return (h, row_variant, directions, alpha), dict(pos_start=pos_start, scale=scale)


@pytest.mark.parametrize("impl", faces("steer_add"))
@pytest.mark.parametrize("case", list(CASES))
def test_steer_add(benchmark, case, impl):
    out, want = run_face(benchmark, f"steer_add {case} B={B} T={T} d_model={D_MODEL}", impl,
                         steer_add, steer_add_reference, *inputs(case))
    # ulp-level agreement (tolerances as in tests/kernels/test_steer_add.py)
    fp32 = out.dtype == torch.float32
    tol = dict(atol=1e-5, rtol=1.3e-6) if fp32 else dict(atol=1e-2, rtol=2**-7)
    torch.testing.assert_close(out, want, **tol)
