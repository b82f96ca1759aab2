"""The one prepared device check: everything emofast measures on a GPU, in one command, within
a budget (default 8 minutes on one H100/H200).

    python bench/gpu_check.py              # on the lent GPU: writes bench/results/gpu_check-<device>.json
    python bench/gpu_check.py --smoke      # the same code paths on CPU in about a minute (make test)

Steps, in order, each reported as ok / failed (with the error) / skipped (with the reason), so a
missing package or a failing step never stops the rest:
1. environment: device, versions, whether the C++ extension loaded (CPU faces and the C++
   planner are not needed on the GPU; without the extension the planner's Python twin runs);
2. gpu tests: `pytest -m gpu` (tests/kernels/test_gpu_kernels.py, tests/sweeps/test_gpu_sweeps.py,
   tests/sweeps/test_torchrun.py): every Triton face and the batched engine against their
   oracles, before any number counts, and a torchrun world of 1 (the NCCL path of distributed
   sweeps; gloo in the smoke run);
3. kernels: bench/kernels/gpu_kernels.py (every op vs its baselines and the measured ceilings);
4. sweeps: bench/sweeps/gpu_sweeps.py (the paper's 672-head workload, loop vs batched);
5. SAE training: bench/sae_train_step.py (TopK steps at d_in 3072, d_sae 65536, k 64, bf16:
   emofast's trainer vs plain torch with dense and with embedding_bag decode; memory per token).
Then one table: each figure beside its PERFORMANCE.md target. The smoke run sets
TRITON_INTERPRET=1 and EMOFAST_GPU_SMOKE=1 (the gpu tests then run on CPU at small shapes),
shrinks every shape and writes nothing unless --out is given.

On the device machine (torch and triton come with its image; no install, no C++ build needed):
    python3 bench/gpu_check.py --out $OUT/gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (figure, target text, check): figures are looked up in the rows by gpu_check itself
TARGETS = {
    "masked_ablate[zero] triton": (">= 0.80 of copy bandwidth", lambda r: r["frac_copy_bw"] >= .8),
    "masked_ablate[patch] triton": (">= 0.80 of copy bandwidth", lambda r: r["frac_copy_bw"] >= .8),
    "steer_add[abs] triton": (">= 0.80 of copy bandwidth", lambda r: r["frac_copy_bw"] >= .8),
    "steer_add[rms] triton": (">= 0.80 of copy bandwidth", lambda r: r["frac_copy_bw"] >= .8),
    "sae_decode triton": (">= 0.70 of copy bw and >= 10x dense",
                          lambda r: r["frac_copy_bw"] >= .7 and r["ratio_vs_baseline"] >= 10),
    "sae_encode[relu] triton": ("within 1.15x of the GEMM", lambda r: r["ratio_vs_baseline"] >= 1 / 1.15),
    "sae training emofast": ("faster than plain torch, dense decode",
                             lambda r: r["ratio_vs_torch_dense"] > 1),
    "sweeps all": (">= 2.5x the loop", lambda r: r["ratio"] >= 2.5),
    "sweeps last": (">= 20x the loop", lambda r: r["ratio"] >= 20),
    "sweeps last ceiling": (">= 0.50 of the bf16 GEMM", lambda r: r["fraction_of_ceiling"] >= .5),
}


def environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
            or platform.machine()}
    for name in ("triton", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError as e:
            info[name] = f"missing ({e})"
    from emofast.kernels import cpp

    info["cpp_extension"] = "loaded" if cpp.ops() is not None else "not built here"
    return info


def gpu_tests(smoke: bool, budget_s: float) -> dict:
    """pytest -m gpu in a child process; counts from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env["TRITON_INTERPRET"] = "1" if smoke else "0"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                               "no:cacheprovider", f"--junitxml={xml}", "tests"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=budget_s)
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit {done.returncode}): "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        suite = ET.parse(xml).getroot().find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]
            - counts["skipped"], "failed_tests": failed[:20], "exit_code": done.returncode,
            "tail": done.stdout[-1500:]}


def kernels(device: str, smoke: bool) -> dict:
    sys.path[:0] = [str(ROOT / "bench" / "kernels"), str(ROOT / "bench")]
    from gpu_kernels import run

    return run(device, small=smoke)


def sweeps(device: str, smoke: bool, ceiling_tflops: float | None) -> dict:
    sys.path[:0] = [str(ROOT / "bench" / "sweeps"), str(ROOT / "bench")]
    from gpu_sweeps import run

    if smoke:
        return run(device, small=True, n_prompts=3, tokens=6)
    return run(device, ceiling_tflops=ceiling_tflops)


def sae_training(device: str, smoke: bool) -> dict:
    sys.path[:0] = [str(ROOT / "bench")]
    from sae_train_step import run

    return run(device, small=smoke)


def figures(report: dict) -> list[tuple[str, float | None, str, str]]:
    """(figure, value, target, verdict) for the table."""
    rows = {f"{r['op']} {r['impl']}": r for r in report["steps"].get("kernels", {})
            .get("result", {}).get("rows", [])}
    for r in report["steps"].get("sweeps", {}).get("result", {}).get("rows", []):
        rows[f"sweeps {r['positions']}"] = r
        if r["positions"] == "last":
            rows["sweeps last ceiling"] = r
    for r in report["steps"].get("sae training", {}).get("result", {}).get("rows", []):
        rows[f"sae training {r['impl']}"] = r
    out = []
    for name, (target, ok) in TARGETS.items():
        r = rows.get(name)
        if r is None:
            out.append((name, None, target, "not measured"))
            continue
        value = (r.get("fraction_of_ceiling") if name.endswith("ceiling") else
                 r.get("ratio_vs_torch_dense") if name.startswith("sae training") else r.get("ratio")
                 if name.startswith("sweeps") else r.get("frac_copy_bw", r.get("ratio_vs_baseline")))
        try:
            verdict = "met" if ok(r) else "NOT met"
        except (KeyError, TypeError):
            verdict = "n/a"
        if report["smoke"]:  # interpreted Triton on CPU: the paths ran, the numbers mean nothing
            verdict = "(smoke: not a measurement)"
        out.append((name, value, target, verdict))
    return out


def step(report: dict, name: str, fn, *args, deadline: float, need_s: float) -> None:
    left = deadline - time.monotonic()
    if left < need_s:
        report["steps"][name] = {"status": "skipped", "reason": f"time budget: {left:.0f} s left, "
                                 f"~{need_s:.0f} s needed"}
        return
    t = time.monotonic()
    try:
        result = fn(*args)
        report["steps"][name] = {"status": "ok", "result": result}
    except Exception as e:  # report and go on: one broken step must not hide the others
        report["steps"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc()[-3000:]}
    report["steps"][name]["seconds"] = round(time.monotonic() - t, 1)
    print(f"[gpu_check] {name}: {report['steps'][name]['status']} "
          f"({report['steps'][name]['seconds']} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, small shapes, the same code paths")
    ap.add_argument("--out", default=None, help="JSON path (default on a GPU: "
                    "bench/results/gpu_check-<device>.json; smoke: nothing written)")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds for the whole check "
                    "(default 480; smoke 120: a fresh CI machine's first imports are slow)")
    args = ap.parse_args(argv)
    if args.smoke:  # before anything imports triton
        os.environ["TRITON_INTERPRET"], os.environ["EMOFAST_GPU_SMOKE"] = "1", "1"
    sys.path.insert(0, str(ROOT))
    import torch

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --smoke on CPU", file=sys.stderr)
        return 1
    budget = args.budget_s or (120.0 if args.smoke else 480.0)
    deadline = time.monotonic() + budget
    report = {"date": date.today().isoformat(), "smoke": args.smoke, "budget_s": budget,
              "steps": {}}
    step(report, "environment", environment, device, deadline=deadline, need_s=0)
    step(report, "gpu tests", gpu_tests, args.smoke, budget * 0.4, deadline=deadline,
         need_s=budget * 0.1)
    step(report, "kernels", kernels, device, args.smoke, deadline=deadline, need_s=budget * 0.15)
    ceiling = report["steps"].get("kernels", {}).get("result", {}).get("ceilings", {})
    step(report, "sweeps", sweeps, device, args.smoke, ceiling.get("matmul_TFLOP_s"),
         deadline=deadline, need_s=budget * 0.2)
    step(report, "sae training", sae_training, device, args.smoke, deadline=deadline,
         need_s=budget * 0.05)
    report["figures"] = [dict(zip(("figure", "value", "target", "verdict"), f))
                         for f in figures(report)]
    report["elapsed_s"] = round(budget - (deadline - time.monotonic()), 1)
    _print_table(report)
    out = args.out or (None if args.smoke else ROOT / "bench" / "results" /
                       f"gpu_check-{report['steps']['environment']['result']['device'].replace(' ', '_')}.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {out}")
    failed = [n for n, s in report["steps"].items() if s["status"] == "failed"]
    tests = report["steps"].get("gpu tests", {}).get("result", {})
    return 1 if failed or tests.get("failures") or tests.get("errors") else 0


def _print_table(report: dict) -> None:
    env = report["steps"].get("environment", {}).get("result", {})
    print(f"\ngpu_check on {env.get('device', '?')} ({'smoke, ' if report['smoke'] else ''}"
          f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, C++ "
          f"{env.get('cpp_extension', '?')}), {report['elapsed_s']} s")
    for name, s in report["steps"].items():
        detail = s.get("reason") or s.get("error") or ""
        if name == "gpu tests" and s["status"] == "ok":
            r = s["result"]
            detail = (f"{r['passed']} passed, {r['failures'] + r['errors']} failed, "
                      f"{r['skipped']} skipped")
        print(f"  {name:<13} {s['status']:<8} {s.get('seconds', 0):>6} s  {detail[:90]}")
    print(f"\n{'figure':<30}{'value':>10}  {'target (PERFORMANCE.md)':<38}verdict")
    for f in report["figures"]:
        value = "-" if f["value"] is None else f"{f['value']:.3g}"
        print(f"{f['figure']:<30}{value:>10}  {f['target']:<38}{f['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
