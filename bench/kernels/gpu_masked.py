"""GPU timings of masked_ablate and steer_add (Triton) against the torch reference.

Shapes (GPU): d_model 4096, 8192 tokens (B=64 x T=128), V=64 variants, ~10% of units per
variant, rows -1 or a random variant, pos_start random in [0, T]. Each row of the result is
{op, impl, ms, GB_s, bytes}: bytes is what the op must move at least, out of place:
  masked_ablate: read x + write out (+ read fill at the edited features, mode patch)
  steer_add:     read h + write out + read the B direction rows used (fp32)
GB_s = bytes / time. impl "triton" is the public function (argument checks, including one host
sync to check row_variant / pos_start values), "triton-kernel" the bare launch, "torch" the
reference (gather + torch.where / addcmul). `small`: the smoke run's tiny shapes.
"""
from __future__ import annotations

import torch

from timing import median_ms

GPU_SHAPE, SMALL_SHAPE = (64, 128, 4096, 64), (4, 8, 96, 4)   # B, T, d_model, V


def _row(op: str, impl: str, ms: float, nbytes: int) -> dict:
    return {"op": op, "impl": impl, "ms": ms, "GB_s": nbytes / (ms * 1e-3) / 1e9, "bytes": nbytes,
            "baseline": "torch"}


def _mask(g: torch.Generator, V: int, n_units: int, device) -> torch.Tensor:
    """[V, n_words] int32 packed bits, ~10% set."""
    bits = torch.rand(V, (n_units + 31) // 32 * 32, generator=g) < 0.1
    words = (bits.view(V, -1, 32).long() * 2 ** torch.arange(32)).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).to(device)


def bench_masked_ops(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                     small: bool = False) -> list[dict]:
    """Time masked_ablate (zero, patch) and steer_add (abs, rms); one row per op x impl, with
    ratio_vs_baseline = torch ms / ms."""
    from emofast.kernels import masked_ablate, masked_ablate_reference, steer_add
    from emofast.kernels import steer_add_reference
    from emofast.kernels.triton.masked_ablate import masked_ablate_triton
    from emofast.kernels.triton.steer_add import steer_add_triton

    B, T, D, V = SMALL_SHAPE if small else GPU_SHAPE
    g = torch.Generator().manual_seed(0)
    elem = torch.finfo(dtype).bits // 8
    x = torch.randn(B, T, D, generator=g).to(device, dtype)                 # [B, T, d_model]
    fill = torch.randn(B, T, D, generator=g).to(device, dtype)
    row_variant = torch.randint(-1, V, (B,), generator=g).to(device)
    pos_start = torch.randint(0, T + 1, (B,), generator=g).to(device)
    mask = _mask(g, V, D, device)
    directions = torch.randn(V, D, generator=g).to(device)
    alpha = torch.randn(B, generator=g).to(device)
    n_edit = int((masked_ablate(torch.ones_like(x), row_variant, mask, mode="zero",
                                pos_start=pos_start) == 0).sum())
    rows = []
    for mode in ("zero", "patch"):
        f = fill if mode == "patch" else None
        nbytes = 2 * x.numel() * elem + (n_edit * elem if mode == "patch" else 0)
        kw = dict(mode=mode, fill=f, pos_start=pos_start)
        fns = {"triton": lambda: masked_ablate(x, row_variant, mask, impl="triton", **kw),
               "triton-kernel": lambda: masked_ablate_triton(x, row_variant, mask, mode, f, 1.0, 1,
                                                             pos_start, False),
               "torch": lambda: masked_ablate_reference(x, row_variant, mask, **kw)}
        rows += _timed(f"masked_ablate[{mode}]", fns, nbytes, device)
    for scale in ("abs", "rms"):
        nbytes = 2 * x.numel() * elem + B * D * 4
        fns = {"triton": lambda: steer_add(x, row_variant, directions, alpha, pos_start=pos_start,
                                           scale=scale, impl="triton"),
               "triton-kernel": lambda: steer_add_triton(x, row_variant, directions, alpha,
                                                         pos_start, scale == "rms", False),
               "torch": lambda: steer_add_reference(x, row_variant, directions, alpha,
                                                    pos_start=pos_start, scale=scale)}
        rows += _timed(f"steer_add[{scale}]", fns, nbytes, device)
    return rows


def _timed(op: str, fns: dict, nbytes: int, device) -> list[dict]:
    ms = {impl: median_ms(fn, device) for impl, fn in fns.items()}
    return [{**_row(op, impl, t, nbytes), "ratio_vs_baseline": ms["torch"] / t}
            for impl, t in ms.items()]
