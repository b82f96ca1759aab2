"""TopK SAEs for SmolLM2 at L6 and L15 resid_post (8 x d_model, k 32), one epoch of the default
corpus, then evaluate_sae on emofast's neutral sentences (held out: not in the corpus).

    .venv/bin/python bench/sae_train_cpu.py [--out bench/results/sae_train_cpu.json]

The checkpoints go to a temporary folder (hundreds of MB), removed at the end.
"""
import argparse
import json
import shutil
import tempfile
import time
from datetime import date

import torch

import emofast as ef


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/sae_train_cpu.json")
    args = p.parse_args()
    model = ef.load_model(progress=False)
    cfg = ef.SAETrainConfig(sites=("L6.resid_post", "L15.resid_post"), expansion=8, k=32,
                            epochs=1)
    folder = tempfile.mkdtemp()
    start = time.perf_counter()
    res = ef.train_saes(model, ef.load_corpus(), cfg, out=folder, progress=False)
    doc = {"date": date.today().isoformat(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "train_s": time.perf_counter() - start,
           "tokens": res.tokens}
    shutil.rmtree(folder)
    for site, sae in res.saes.items():
        ev = ef.evaluate_sae(model, sae, ef.neutral_sentences(), progress=False)
        doc[site] = {k: v for k, v in ev.to_json().items() if k != "density"}
    print(json.dumps(doc, indent=1))
    with open(args.out, "w") as f:
        f.write(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
