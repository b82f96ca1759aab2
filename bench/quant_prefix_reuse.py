"""Prefix reuse in the quantization profiler: an arm that changes only layers >= L runs from
the reference's residual at L. Measured against the same arm recomputed from layer 0, in one
process, on the embedded SmolLM2 and the quick preset's texts.

    .venv/bin/python bench/quant_prefix_reuse.py [--out bench/results/quant_prefix_reuse.json]

For the late third (L20-29), the last window (L25-29) and the last layer at rtn:3:32: the
seconds of `arm_pass` over the general and emotion texts with reuse and without (the arm's
first_layer set to 0), median of 3, their ratio, and the largest difference of the KL per
token between the two (it must be ~0: the same computation).
"""
import argparse
import json
import statistics
import time
from datetime import date

import torch

import emofast as ef
from emofast.data import EMOTIONS6, labelled_sample
from emofast.data import general_texts
from emofast.quant import quantize
from emofast.quant.passes import arm_pass, reference_pass


def timed(fn, repeats=3):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/quant_prefix_reuse.json")
    args = p.parse_args()
    model = ef.load_model(progress=False)
    texts = general_texts(20, 300) + [e.text for e in labelled_sample("emo6:train", EMOTIONS6,
                                                                        10, 0)]
    ref = reference_pass(model, texts, batch_size=8, progress=False)
    rows = []
    for name, layers in (("late third", range(20, 30)), ("window L25-29", range(25, 30)),
                         ("single L29", [29])):
        q = quantize(model, "rtn:3:32", layers=layers)
        reused, t_reuse = timed(lambda: arm_pass(q, ref, progress=False))
        q.hf.emofast_quantization = {**q.hf.emofast_quantization, "first_layer": 0}
        full, t_full = timed(lambda: arm_pass(q, ref, progress=False))
        rows.append({"arm": name, "first_layer": min(layers), "reuse_s": round(t_reuse, 2),
                     "full_s": round(t_full, 2), "speedup": round(t_full / t_reuse, 2),
                     "max_kl_difference": float((reused.kl - full.kl).abs().max())})
        print(rows[-1])
    result = {"date": str(date.today()), "device": "cpu", "threads": torch.get_num_threads(),
              "n_tokens": len(ref.tokens.text), "scheme": "rtn:3:32:asym", "rows": rows,
              "command": "bench/quant_prefix_reuse.py"}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
