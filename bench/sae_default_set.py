"""The default SAE set for the embedded model, trained and judged on held-out text.

    .venv/bin/python bench/sae_default_set.py [--epochs N] [--out bench/results/sae_default_set.json]
    .venv/bin/python bench/sae_default_set.py --evaluate-only DIR    # SAEs trained before

Trains what `emofast sae train` trains with no arguments (TopK, 8 x d_model, k 32, six resid_post
layers of SmolLM2-135M-Instruct, the built-in corpus) into a temporary folder (the activation
cache and checkpoints are about 2 GB), timing the run, then evaluates every SAE with
`evaluate_sae` on two held-out sets, neither in the corpus:
  neutral   basic4's neutral sentences (emofast's own; the default corpus leaves them out)
  external  150 replies written by Llama-3.2-3B-Instruct for the emotion-circuits paper
            (../shared/data/emotion-circuits/prompted_test_accepted.jsonl, a seeded sample;
            skipped where that folder is absent)
Targets (issue 10): FVU <= 0.15 at every layer up to 2/3 depth and <= 0.25 at the last, dead
latents < 5%, CE-loss score >= 0.90 at every layer, training <= 20 minutes on a 2-core CPU.
"""
import argparse
import json
import random
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import emofast as ef
from emofast.sae.train import default_sites

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion-circuits" / \
    "prompted_test_accepted.jsonl"


def held_out() -> dict[str, list[str]]:
    sets = {"neutral": ef.neutral_sentences()}
    if EXTERNAL.is_file():
        replies = [json.loads(line)["gen_text"] for line in EXTERNAL.open(encoding="utf-8")]
        sets["external"] = random.Random(0).sample(replies, 150)
    return sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default: SAETrainConfig's")
    p.add_argument("--evaluate-only", default=None, help="a folder of trained SAEs")
    p.add_argument("--out", default="bench/results/sae_default_set.json")
    args = p.parse_args()
    model = ef.load_model(progress=False)
    doc = {"date": date.today().isoformat(), "threads": torch.get_num_threads(),
           "torch": torch.__version__}
    folder = args.evaluate_only
    if folder is None:
        cfg = ef.SAETrainConfig() if args.epochs is None else ef.SAETrainConfig(
            epochs=args.epochs)
        folder = tempfile.mkdtemp()
        start = time.perf_counter()
        res = ef.train_saes(model, ef.load_corpus(), cfg, out=folder, progress=True)
        doc.update(train_s=time.perf_counter() - start, tokens=res.tokens, epochs=cfg.epochs,
                   config={k: v for k, v in vars(cfg).items()},
                   last_fill=res.history[-1])   # training fvu, l0, dead (50k-token window)
    sets = held_out()
    doc["held_out_tokens"] = {}
    for site in default_sites(model.n_layers):
        sae = ef.load_sae(Path(folder) / site, model)
        doc[site] = {}
        for name, texts in sets.items():
            ev = ef.evaluate_sae(model, sae, texts, progress=False)
            doc["held_out_tokens"][name] = ev.n_tokens
            doc[site][name] = {k: v for k, v in ev.to_json().items()
                               if k not in ("density", "site")}
            print(f"{site} {name}: fvu {ev.fvu:.3f} l0 {ev.l0:.1f} dead {ev.dead_fraction:.1%} "
                  f"CE score {ev.ce_loss_score:.3f} KL {ev.kl_sae:.4f}", flush=True)
    if args.evaluate_only is None:
        shutil.rmtree(folder)
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
