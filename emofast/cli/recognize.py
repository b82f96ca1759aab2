"""`emofast recognize`: the emotion-recognition task (emofast.eval.recognition) on labelled
texts; writes DIR/metrics.json {"accuracy", "per_emotion", "n", "confusion", ...}, with
`--steer STEERING` also "steered" (the same keys under a saved feature steering), "kl_neutral"
and "ppl_change" (its mean next-token KL and perplexity ratio on the neutral sentences).

    emofast recognize --data emo6 --split test --out runs/recognize
    emofast recognize --data texts.jsonl --out runs/recognize      # {"text", "label"} lines
    emofast recognize --data emo6 --split test --steer runs/features/steering --out runs/rec
"""
from __future__ import annotations

from pathlib import Path

from ..data import EMOTIONS6, load_dataset, neutral_sentences
from ..eval.preservation import lm_preservation
from ..eval.recognition import recognize
from ..interventions.features import load_steering
from ..report.files import write_json
from . import common
from .common import add_model_flags


def add_parser(sub) -> None:
    p = sub.add_parser("recognize", help="which of six emotions a text expresses, as the model "
                       "answers it: accuracy, per emotion, confusion")
    add_model_flags(p)
    p.add_argument("--data", required=True, help="a built-in dataset name or a JSONL file of "
                   "{\"text\", \"label\"} (labels: anger, sadness, happiness, fear, surprise, "
                   "disgust), or the paper's judged replies")
    p.add_argument("--split", default=None, help="only the texts whose \"split\" field is "
                   "this (emo6: train or test)")
    p.add_argument("--labels", default=",".join(EMOTIONS6), help="the answer's labels, comma "
                   "separated (default the six; every text's label must be one)")
    p.add_argument("--steer", default=None, help="a saved feature steering folder (written by "
                   "`emofast features` into DIR/steering): also measure the steered model")
    p.add_argument("--calibrate", action="store_true", help="subtract each label's score on "
                   "content-free inputs (contextual calibration, Zhao et al. 2021)")
    p.add_argument("--out", required=True, help="folder for metrics.json")
    p.set_defaults(fn=run)


def run(args) -> int:
    examples = load_dataset(args.data)
    if args.split is not None:
        examples = [e for e in examples if e.meta.get("split") == args.split]
        if not examples:
            raise ValueError(f"{args.data} has no texts of split {args.split!r}")
    model = common.load(args)
    labels = tuple(lab.strip() for lab in args.labels.split(",") if lab.strip())
    steering = None if args.steer is None else load_steering(args.steer, model)
    res = recognize(model, examples, labels=labels, calibrate=args.calibrate,
                    progress=not args.quiet)
    metrics = res.to_json()
    print(_line("plain", res))
    if steering is not None:
        steered = recognize(model, examples, labels=labels, intervention=steering,
                            calibrate=args.calibrate, progress=not args.quiet)
        [pres] = lm_preservation(model, neutral_sentences(), [steering])
        metrics.update(steered=steered.to_json(), kl_neutral=pres.kl_mean,
                       ppl_change=pres.ppl_edited / pres.ppl_clean, steering=str(args.steer))
        print(_line("steered", steered) + f"; neutral KL {pres.kl_mean:.3f} nats, perplexity "
              f"x{pres.ppl_edited / pres.ppl_clean:.2f}")
    out = Path(args.out)
    write_json(out / "metrics.json", metrics)
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _line(what: str, res) -> str:
    return (f"{what}: accuracy {res.accuracy:.1%} over {len(res.truth)} texts; " + ", ".join(
        f"{e} {a:.0%}" for e, a in res.per_emotion.items()))
