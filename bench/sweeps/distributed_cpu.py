"""A 270-head sweep of the embedded SmolLM2 on CPU: 1 process x 2 threads against 2 processes x
1 thread under torchrun (gloo), in one script, through the `emofast sweep` command.

    .venv/bin/python bench/sweeps/distributed_cpu.py [--out bench/results/sweep_distributed_cpu.json]

Each run is a fresh output folder: one variant per (layer, head) zeroing its attn_z slice, KL at
the last token, scope all, 6 prompts. Reported: the command's wall time (model load included)
and the sweep's own elapsed_s from results.json (every rank's elapsed is rank 0's: it waits for
the others), and the largest difference between the two runs' values.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

PROMPTS = ["I just heard the news about my grandmother.", "The package finally arrived today.",
           "My manager wants to see me in her office.", "We are moving to a new city next week.",
           "Someone left the front door wide open.", "The test results came back this morning."]


def run(cmd, threads):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stdout + p.stderr)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/sweep_distributed_cpu.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    common = ["sweep", "--variants", "heads", "--metric", "kl", "--scope", "all", "--quiet",
              "--prompts", str(tmp / "prompts.txt"), "--batch-size", "6"]
    rows = {}
    for name, cmd, threads in (
            ("1 process x 2 threads", [sys.executable, "-m", "emofast"], 2),
            ("2 processes x 1 thread (torchrun)", [sys.executable, "-m", "torch.distributed.run",
                                                   "--nproc-per-node", "2", "--master-port",
                                                   "29533", "-m", "emofast"], 1)):
        out = tmp / name.split()[0]
        wall = run(cmd + common + ["--out", str(out)], threads)
        res = json.loads((out / "results.json").read_text())
        rows[name] = {"wall_s": round(wall, 1), "sweep_s": round(res["elapsed_s"], 1),
                      "values": [v["value"] for v in res["variants"]]}
        print(name, rows[name]["wall_s"], rows[name]["sweep_s"])
    a, b = (r["values"] for r in rows.values())
    names = list(rows)
    result = {"date": str(date.today()), "device": "cpu (2 cores)", "n_variants": len(a),
              "n_prompts": len(PROMPTS), "max_abs_diff": max(abs(x - y) for x, y in zip(a, b)),
              "speedup_sweep": rows[names[0]]["sweep_s"] / rows[names[1]]["sweep_s"],
              "runs": {k: {kk: vv for kk, vv in v.items() if kk != "values"}
                       for k, v in rows.items()},
              "command": "bench/sweeps/distributed_cpu.py"}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
