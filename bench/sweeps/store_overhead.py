"""What the verified store costs: SmolLM2's 270 heads swept with out=DIR against the same sweep
without a folder, in one process; plus the weights' sha256 alone and a resume of the finished
folder (every part read back and checked).

    .venv/bin/python bench/sweeps/store_overhead.py [--out bench/results/store_overhead.json]

Each sweep runs `repeats` times (best kept); the store run starts from an empty folder each time.
"""
import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import emofast as ef
from emofast import KL, Edit, sweep
from emofast.models.identity import weights_sha256

PROMPTS = ["I can't believe they cancelled my flight again. I feel so",
           "Thank you for the lovely flowers! I feel so",
           "The report is due on Friday, and I feel",
           "The smell in the fridge made me feel"]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/store_overhead.json")
    args = p.parse_args()
    model = ef.load_model(progress=False)
    variants = [[Edit(layer, "attn_z", [h])] for layer in range(model.n_layers)
                for h in range(model.n_heads)]
    kw = dict(scope="last", progress=False, batch_size=len(PROMPTS))
    sweep(model, PROMPTS, variants[:9], KL(), **kw)  # warm up
    root = Path(tempfile.mkdtemp())

    def stored():
        shutil.rmtree(root / "run", ignore_errors=True)
        sweep(model, PROMPTS, variants, KL(), out=root / "run", **kw)

    plain_s = best(lambda: sweep(model, PROMPTS, variants, KL(), **kw), args.repeats)
    stored_s = best(stored, args.repeats)
    resume_s = best(lambda: sweep(model, PROMPTS, variants, KL(), out=root / "run", **kw),
                    args.repeats)
    hash_s = best(lambda: weights_sha256(model.hf), args.repeats)
    n_parts = len(list((root / "run" / "parts").glob("*.safetensors")))
    shutil.rmtree(root)
    doc = {"date": date.today().isoformat(), "device": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "model": model.name, "variants": len(variants), "prompts": len(PROMPTS),
           "parts": n_parts, "sweep_s": plain_s, "sweep_with_store_s": stored_s,
           "store_overhead_ratio": stored_s / plain_s, "resume_finished_s": resume_s,
           "weights_sha256_s": hash_s,
           "weights_mb": sum(t.numel() * t.element_size()
                             for t in model.hf.state_dict().values()) / 2**20}
    print(json.dumps(doc, indent=2))
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
