"""`emofast discover` (quick) before and after a change, in one script, and whether the two
reports' findings agree.

    .venv/bin/python bench/discover_quick.py --before REV [--out bench/results/discover_quick.json]

"before" is the committed revision REV, exported to a temporary folder (the compiled C++
extension of this checkout copied beside it: REV must have the same csrc/); "after" is this
checkout. Both run `python -m emofast discover --out DIR --quiet` in a subprocess with the same
interpreter and threads, one after the other. Agreement, per emotion: the same top head, the
same exact top-10 heads, the largest difference of the exact head effects, of the screen and of
each top-k curve (as a fraction of that quantity's largest magnitude, TOLERANCE), and for the
circuits report the largest difference of its modulation/steering/prompting accuracies.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-3     # float reassociation only: shared prefixes and chains change sum orders


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` under `into`, with this checkout's compiled extension."""
    if subprocess.run(["git", "diff", "--quiet", rev, "HEAD", "--", "csrc"], cwd=ROOT).returncode:
        raise SystemExit(f"{rev} has other C++ sources than HEAD: build it separately")
    archive = into / "before.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev], cwd=ROOT, check=True)
    with tarfile.open(archive) as t:
        t.extractall(into / "before", filter="data")
    for so in (ROOT / "emofast").glob("_C*.so"):
        shutil.copy(so, into / "before" / "emofast")
    return into / "before"


def run(root: Path, out: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "emofast", "discover", "--out", str(out),
                        "--quiet"], cwd=root, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stdout + p.stderr)
    return time.perf_counter() - t0


def relative(a, b) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def agreement(before: dict, after: dict) -> dict:
    out = {}
    for e, b in before["emotions"].items():
        a = after["emotions"][e]
        hb, ha = torch.tensor(b["head_effect"]), torch.tensor(a["head_effect"])
        row = {"top_head_same": int(hb.flatten().argmin()) == int(ha.flatten().argmin()),
               "exact_top10_same": set(hb.abs().flatten().topk(10).indices.tolist())
               == set(ha.abs().flatten().topk(10).indices.tolist()),
               "top10_found": [b["top10_found"], a["top10_found"]],
               "spearman_all_heads": [b["spearman_all_heads"], a["spearman_all_heads"]],
               "head_effect_rel_diff": relative(a["head_effect"], b["head_effect"]),
               "screen_rel_diff": relative(a["screen_heads"], b["screen_heads"])}
        for k in b:
            if k.startswith("curve_"):
                row[f"{k}_rel_diff"] = relative(a[k], b[k])
        out[e] = row
    cb = before["circuits"]["control"]["per_emotion"]
    ca = after["circuits"]["control"]["per_emotion"]
    out["circuits_accuracy_max_diff"] = max(abs(ca[e][k] - cb[e][k]) for e in cb
                                            for k in ("modulation", "steering", "prompting"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="git revision of the 'before' code")
    ap.add_argument("--out", default="bench/results/discover_quick.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    before_root = export(args.before, tmp)
    walls, reports = {}, {}
    for name, root in (("before", before_root), ("after", ROOT)):
        walls[name] = run(root, tmp / name)
        reports[name] = json.loads((tmp / name / "report.json").read_text())
        print(f"{name}: {walls[name]:.0f} s", flush=True)
    agree = agreement(reports["before"], reports["after"])
    diffs = [v for row in agree.values() if isinstance(row, dict)
             for k, v in row.items() if k.endswith("_rel_diff")]
    same = all(row["top_head_same"] and row["exact_top10_same"]
               for row in agree.values() if isinstance(row, dict))
    result = {"date": str(date.today()), "device": "cpu", "threads": torch.get_num_threads(),
              "before": args.before,
              "after": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                      capture_output=True, text=True).stdout.strip()
              + ("+dirty" if subprocess.run(["git", "diff", "--quiet"], cwd=ROOT).returncode
                 else ""),
              "command": "python -m emofast discover --out DIR --quiet",
              "wall_s": {k: round(v, 1) for k, v in walls.items()},
              "ratio": round(walls["before"] / walls["after"], 2),
              "elapsed_s": {k: r["elapsed_s"] for k, r in reports.items()},
              "circuits_elapsed_s": {k: r["circuits"]["elapsed_s"] for k, r in reports.items()},
              "sweep_s": {k: {e: x["sweep_s"] for e, x in r["emotions"].items()}
                          for k, r in reports.items()},
              "tolerance_rel": TOLERANCE, "max_rel_diff": max(diffs),
              "agree": same and max(diffs) <= TOLERANCE, "per_emotion": agree}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s", "ratio", "max_rel_diff", "agree")}))


if __name__ == "__main__":
    main()
