"""`emofast recognize`: the emotion-recognition task (emofast.eval.recognition) on labelled
texts; writes DIR/metrics.json {"accuracy", "per_emotion", "n", "confusion", ...}.

    emofast recognize --data emo6 --split test --out runs/recognize
    emofast recognize --data texts.jsonl --out runs/recognize      # {"text", "label"} lines
"""
from __future__ import annotations

from pathlib import Path

from ..data import EMOTIONS6, load_dataset
from ..eval.recognition import recognize
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
    res = recognize(model, examples, labels=labels, progress=not args.quiet)
    out = Path(args.out)
    write_json(out / "metrics.json", res.to_json())
    print(f"accuracy {res.accuracy:.1%} over {len(res.truth)} texts; " + ", ".join(
        f"{e} {a:.0%}" for e, a in res.per_emotion.items()) + f"; wrote {out / 'metrics.json'}")
    return 0
