"""SAE feature edits on SmolLM2 on CPU: engine="batched" against engine="loop", same run.

    .venv/bin/python bench/sweeps/feature_sweep_cpu.py [--features 96] [--out bench/results/feature_sweep_cpu.json]

Needs the default SAE set (`emofast sae train`). Workload: the --features most active features
of each of the L19 and L29 resid_post SAEs on the prompts, zero-ablated one at a time
(FeatureEdit), KL(clean || edited) at the last token, scopes "all" and "last", on the six prompts
of sweep_heads_cpu.py.
Prints and writes wall times, the ratio and the largest |batched - loop| difference.
"""
import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

import emofast as ef
from emofast import KL, FeatureEdit, sweep
from sweep_heads_cpu import PROMPTS  # the same six prompts (this folder is on sys.path)


def active(model, sae, n: int) -> list[int]:
    seen = []
    enc = model.encode(PROMPTS, padding_side="left")
    with torch.no_grad(), model.hooks({sae.site: lambda act, site: seen.append(act)}):
        model.forward(enc["input_ids"], enc["attention_mask"])
    x = seen[0][enc["attention_mask"].bool()]
    return sae.dense(sae.encode(x)).sum(0).argsort(descending=True)[:n].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=96)
    ap.add_argument("--out", default="bench/results/feature_sweep_cpu.json")
    args = ap.parse_args()
    model = ef.load_model(progress=False)
    saes = [ef.load_sae(f"{model.name}/L{layer}.resid_post", model) for layer in (19, 29)]
    variants = [[FeatureEdit(s, [f])] for s in saes for f in active(model, s, args.features)]
    rows = []
    for scope in ("all", "last"):
        t = time.perf_counter()
        loop = sweep(model, PROMPTS, variants, KL(), engine="loop", scope=scope,
                     batch_size=len(PROMPTS), progress=False)
        t_loop = time.perf_counter() - t
        t = time.perf_counter()
        fast = sweep(model, PROMPTS, variants, KL(), engine="batched", scope=scope,
                     batch_size=len(PROMPTS), progress=False)
        t_fast = time.perf_counter() - t
        rows.append({"workload": f"{len(variants)} single-feature zero ablations (L19, L29 "
                                 f"resid_post SAEs), scope={scope}, KL",
                     "loop_s": t_loop, "batched_s": t_fast, "ratio": t_loop / t_fast,
                     "max_abs_diff": (fast.per_prompt - loop.per_prompt).abs().max().item(),
                     "metric_scale": loop.per_prompt.abs().max().item()})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({
        "date": str(date.today()), "device": f"cpu {platform.processor() or platform.machine()}",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
