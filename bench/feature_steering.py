"""Causal feature steering for recognition on the embedded model: the curve over n and both
transfer directions (issue 11, section 4), with its controls.

    .venv/bin/python bench/feature_steering.py [--ns 2,5,10] [--replies-ns 5] [--out ...json]

Needs the default SAE set (`emofast sae train`). For each direction and each n (training texts
per emotion): `choose_feature_steering` on n texts per emotion of the training set (specific,
sink-free features; grid m x factor within 0.1 nats of neutral KL: the best there, and whether
it beats the unsteered model on the training texts); then held-out accuracy on the other sets (20 per emotion, seeded) unsteered, calibrated
(Zhao et al. 2021), steered and with random features matched in site and firing rate.
Directions: emo6 train -> emo6 test and the 2510.11328 paper's judged replies
(../shared/data/emotion-circuits/prompted_test_accepted.jsonl; skipped where absent), and those
replies -> emo6 test.
"""
import argparse
import json
import time
from datetime import date
from pathlib import Path

import emofast as ef
from emofast.data import EMOTIONS6, labelled_sample
from emofast.discovery.feature_steering import (choose_feature_steering, emotion_attributions,
                                                matched_random)
from emofast.eval.preservation import lm_preservation
from emofast.sae import load_sae_set

REPLIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion-circuits" / \
    "prompted_test_accepted.jsonl"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ns", default="2,5,10")
    p.add_argument("--n-eval", type=int, default=20)
    p.add_argument("--replies-ns", default="5", help="n for the reverse direction (replies "
                   "-> emo6 test)")
    p.add_argument("--out", default="bench/results/feature_steering.json")
    args = p.parse_args()
    model = ef.load_model()
    saes = load_sae_set(model)
    neutral = ef.neutral_sentences(24)
    evals = {"emo6:test": labelled_sample("emo6:test", EMOTIONS6, args.n_eval, 0)}
    directions = {"emo6:train": ["emo6:test"]}
    if REPLIES.is_file():
        evals["replies"] = labelled_sample(str(REPLIES), EMOTIONS6, args.n_eval, 0)
        directions["emo6:train"].append("replies")
        directions["replies"] = ["emo6:test"]
    plain = {k: ef.recognize(model, v, progress=False).accuracy for k, v in evals.items()}
    calib = {k: ef.recognize(model, v, calibrate=True, progress=False).accuracy
             for k, v in evals.items()}
    print("unsteered", plain, "calibrated", calib, flush=True)
    rows = []
    for source, targets in directions.items():
        ns = args.replies_ns if source == "replies" else args.ns
        for n in [int(x) for x in ns.split(",")]:
            t0 = time.perf_counter()
            pool = REPLIES if source == "replies" else source
            train = labelled_sample(str(pool), EMOTIONS6, n, seed=1)   # seed 1: apart from the evals
            attrs = emotion_attributions(model, saes, train, EMOTIONS6)
            c = choose_feature_steering(model, saes, train, neutral, attributions=attrs,
                                        require_gain=False, progress=False)
            row = {"train": source, "n": n,
                   "beats_unsteered": None if c.chosen is None else
                   c.chosen.train_accuracy > c.unsteered_train_accuracy,
                   "unsteered_train": c.unsteered_train_accuracy,
                   "chosen": None if c.chosen is None else c.chosen._asdict(),
                   "grid": [x._asdict() for x in c.candidates], "held_out": {}}
            if c.steering is not None:
                ctrl = matched_random(c.steering, c.firing, sink=c.sink, seed=0)
                [pc] = lm_preservation(model, neutral, [ctrl])
                row["random_kl_neutral"] = pc.kl_mean
                for t in targets:
                    row["held_out"][t] = {
                        "unsteered": plain[t], "calibrated": calib[t],
                        "steered": ef.recognize(model, evals[t], intervention=c.steering,
                                                progress=False).accuracy,
                        "random_control": ef.recognize(model, evals[t], intervention=ctrl,
                                                       progress=False).accuracy}
            row["elapsed_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            ch = row["chosen"]
            print(f"{source} n={n}: chosen "
                  f"{None if ch is None else (ch['per_emotion'], ch['factor'], round(ch['train_accuracy'], 3), round(ch['kl_neutral'], 3))}"
                  f" held-out {row['held_out']}", flush=True)
            Path(args.out).write_text(json.dumps({   # after every row: a partial run counts
                "date": str(date.today()), "device": "cpu (2 cores)",
                "n_eval_per_emotion": args.n_eval, "unsteered": plain, "calibrated": calib,
                "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
