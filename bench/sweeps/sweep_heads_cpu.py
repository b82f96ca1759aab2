"""All 270 SmolLM2 heads (30 layers x 9) on CPU: engine="batched" against engine="loop", same run.

    .venv/bin/python bench/sweeps/sweep_heads_cpu.py [--threads N] [--out bench/results/sweep_heads_cpu.json]

Three workloads, each against the exact all-heads loop on the same prompts and batch:
1. all-position zero ablation of each head, KL(clean || edited) at the last token;
2. the same with edits at the last position only;
3. head discovery: attribution screen of all heads + exact batched sweep of the top 32, against
   the exact all-heads loop with the same metric (log-probability of an emotion word next);
   reports how many of the exact top 10 heads (by |effect|) discovery finds.
Prints and writes wall times, ratios and the largest |batched - loop| difference.
"""
import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

import emofast as ef
from emofast import KL, Edit, LogProb, attribution_screen, sweep, verify_top

PROMPTS = ["I can't believe they cancelled my flight again. I feel so",
           "Thank you for the lovely flowers! I feel so",
           "The report is due on Friday, and I feel",
           "I'm so sorry I forgot your birthday. I feel",
           "They found the lost puppy alive! Everyone felt",
           "The smell in the fridge made me feel"]
EMOTION_WORDS = [" happy", " sad", " angry", " scared", " surprised", " disgusted"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="bench/results/sweep_heads_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ef.load_model(progress=False)
    heads = [[Edit(layer, "attn_z", [h])] for layer in range(model.n_layers)
             for h in range(model.n_heads)]
    kw = dict(batch_size=len(PROMPTS), progress=False)
    rows = []
    for scope in ("all", "last"):
        loop, t_loop = timed(lambda: sweep(model, PROMPTS, heads, KL(), engine="loop",
                                           scope=scope, **kw))
        fast, t_fast = timed(lambda: sweep(model, PROMPTS, heads, KL(), engine="batched",
                                           scope=scope, **kw))
        diff = (fast.per_prompt - loop.per_prompt).abs().max().item()
        rows.append({"workload": f"{len(heads)} heads, positions={scope}, KL",
                     "loop_s": t_loop, "batched_s": t_fast, "ratio": t_loop / t_fast,
                     "max_abs_diff": diff, "metric_scale": loop.per_prompt.abs().max().item()})
        print(json.dumps(rows[-1]), flush=True)

    ids = [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in EMOTION_WORDS]
    metric = LogProb(sorted(set(ids)))
    exact, t_loop = timed(lambda: sweep(model, PROMPTS, [[]] + heads, metric, engine="loop",
                                        scope="all", **kw))
    effect = exact.values[1:] - exact.values[0]                       # [270]

    def discover():
        attr = attribution_screen(model, PROMPTS, metric, sites=("attn_z",), scope="all",
                                  batch_size=len(PROMPTS))
        return verify_top(model, PROMPTS, attr, metric, k=32, kind="heads", batch_size=len(PROMPTS))
    check, t_disc = timed(discover)
    true_top = set(effect.abs().topk(10).indices.tolist())
    found = sorted(zip(check.exact.abs().tolist(), check.units), reverse=True)[:10]
    found = {layer * model.n_heads + h for _, (layer, h) in found}
    rows.append({"workload": "head discovery: screen all + exact top 32 vs exact all-heads loop",
                 "loop_s": t_loop, "batched_s": t_disc, "ratio": t_loop / t_disc,
                 "top10_found": len(true_top & found), "spearman_top32": check.spearman})
    print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "date": date.today().isoformat(), "device": f"CPU ({platform.processor() or 'x86_64'}), "
        f"{args.threads} threads", "model": model.name, "n_prompts": len(PROMPTS),
        "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
