"""Time every emofast kernel against its baselines and the device's ceilings, in one run.

    python bench/kernels/gpu_kernels.py      # a table; writes bench/results/gpu_kernels-<device>.json

Ceilings are measured here, on the same device (`timing.ceilings`: a 1 GiB device copy, bytes
read + written; an 8192^3 bf16 matmul). Each row reports its fraction of the relevant ceiling.
Targets (PERFORMANCE.md): sae_decode >= 70% of copy bandwidth on the bytes it must move and
>= 10x dense decode; sae_encode within 1.15x of the GEMM alone; masked ops >= 80% of copy
bandwidth. Shapes: gpu_masked.py, gpu_sae.py. `bench/gpu_check.py` runs `run()`.
"""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]
from gpu_masked import bench_masked_ops  # noqa: E402
from gpu_sae import bench_sae_ops  # noqa: E402
from timing import ceilings  # noqa: E402


def run(device: str | torch.device = "cuda", small: bool = False) -> dict:
    """{"ceilings", "rows"}: every op x impl, with frac_copy_bw / frac_matmul_peak."""
    dtype = torch.bfloat16
    ceil = ceilings(device, small)
    rows = bench_masked_ops(device, dtype, small) + bench_sae_ops(device, dtype, small)
    for row in rows:
        if row.get("GB_s") is not None:
            row["frac_copy_bw"] = row["GB_s"] / ceil["copy_GB_s"]
        if row.get("TFLOP_s") is not None:
            row["frac_matmul_peak"] = row["TFLOP_s"] / ceil["matmul_TFLOP_s"]
    return {"ceilings": ceil, "rows": rows}


def main() -> int:
    if not torch.cuda.is_available():
        print("bench/kernels/gpu_kernels.py needs a CUDA device (bench/gpu_check.py --smoke runs "
              "the same code on CPU)", file=sys.stderr)
        return 1
    device = torch.cuda.get_device_name()
    result = run("cuda")
    ceil = result["ceilings"]
    print(f"{device}: copy {ceil['copy_GB_s']:.0f} GB/s, bf16 matmul "
          f"{ceil['matmul_TFLOP_s']:.0f} TFLOP/s")
    print(f"{'op':<28}{'impl':<16}{'ms':>9}{'GB/s':>9}{'TFLOP/s':>9}{'of ceil':>9}{'vs base':>9}")
    for r in result["rows"]:
        frac = r.get("frac_copy_bw", r.get("frac_matmul_peak"))
        print(f"{r['op']:<28}{r['impl']:<16}{r['ms']:>9.3f}{r.get('GB_s') or 0:>9.0f}"
              f"{r.get('TFLOP_s') or 0:>9.1f}{frac or 0:>9.2f}{r.get('ratio_vs_baseline') or 0:>9.2f}")
    out = HERE.parent / "results" / f"gpu_kernels-{device.replace(' ', '_')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device, "date": str(date.today()), **result}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
