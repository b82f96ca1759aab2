"""Time every emofast kernel against its baselines on one CUDA device, in one run.

    python bench/gpu_kernels.py            # prints a table, writes bench/results/gpu_kernels-<device>.json

Ceilings are measured here, on the same device: copy bandwidth from a large device-to-device
copy (bytes read + written), and a bf16 matmul FLOP rate. Each row reports its fraction of the
relevant ceiling. Targets (issue 3): sae_decode >= 70% of copy bandwidth on the bytes it must
move and >= 10x dense decode; sae_encode within 1.15x of the GEMM alone; masked ops >= 80% of
copy bandwidth. Shapes: d_model 4096, d_sae 65536, k 64, 8192 tokens, bf16.
"""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_kernels_masked import bench_masked_ops  # noqa: E402
from gpu_kernels_sae import bench_sae_ops  # noqa: E402


def ceilings(device: str = "cuda") -> dict:
    """Copy bandwidth (GB/s, read + write) and bf16 matmul rate (TFLOP/s) on this device."""
    from triton.testing import do_bench

    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)        # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = do_bench(lambda: a @ b)
    return {"copy_GB_s": 2 * src.numel() / (copy_ms * 1e-3) / 1e9,
            "bf16_TFLOP_s": 2 * 8192 ** 3 / (mm_ms * 1e-3) / 1e12}


def main() -> int:
    if not torch.cuda.is_available():
        print("bench/gpu_kernels.py needs a CUDA device", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name()
    ceil = ceilings()
    rows = bench_masked_ops("cuda", torch.bfloat16) + bench_sae_ops("cuda", torch.bfloat16)
    for row in rows:
        if row.get("GB_s") is not None:
            row["frac_copy_bw"] = row["GB_s"] / ceil["copy_GB_s"]
        if row.get("TFLOP_s") is not None:
            row["frac_bf16_peak"] = row["TFLOP_s"] / ceil["bf16_TFLOP_s"]
    print(f"{device}: copy {ceil['copy_GB_s']:.0f} GB/s, bf16 matmul {ceil['bf16_TFLOP_s']:.0f} TFLOP/s")
    print(f"{'op':<28}{'impl':<16}{'ms':>9}{'GB/s':>9}{'TFLOP/s':>9}{'of ceil':>9}{'vs base':>9}")
    for r in rows:
        frac = r.get("frac_copy_bw", r.get("frac_bf16_peak"))
        print(f"{r['op']:<28}{r['impl']:<16}{r['ms']:>9.3f}{r.get('GB_s') or 0:>9.0f}"
              f"{r.get('TFLOP_s') or 0:>9.1f}{frac or 0:>9.2f}{r.get('ratio_vs_baseline') or 0:>9.2f}")
    out = Path(__file__).parent / "results" / f"gpu_kernels-{device.replace(' ', '_')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device, "date": str(date.today()), "ceilings": ceil,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
