"""Timing for the GPU benchmarks: the median of many runs with CUDA events (triton's do_bench),
or, in the CPU smoke run of bench/gpu_check.py, a few host-timed runs of the same code."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device | str) -> float:
    """Median milliseconds of fn() on `device`."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, return_mode="median")
    fn()                                                  # warm-up (and compile, interpreted)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ceilings(device: torch.device | str, small: bool = False) -> dict:
    """Copy bandwidth (GB/s, bytes read + written, a 1 GiB device copy) and matmul rate
    (TFLOP/s, 8192^3 bf16; fp32 on CPU) measured here, on `device`; `small`: tiny sizes."""
    n_bytes, n = (1 << 20, 256) if small else (1 << 30, 8192)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)   # random, never zeros (METHOD.md)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    mm_ms = median_ms(lambda: a @ b, device)
    return {"copy_GB_s": 2 * n_bytes / (copy_ms * 1e-3) / 1e9,
            "matmul_TFLOP_s": 2 * n ** 3 / (mm_ms * 1e-3) / 1e12,
            "matmul_dtype": str(dtype).replace("torch.", "")}
