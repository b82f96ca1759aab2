"""`emofast judge train|eval`: fit the offline judge's head (emofast.eval.judge) or score a head
on labelled texts.

    emofast judge train --train ../shared/data/emotion-circuits/prompted_sev_accepted.jsonl \\
        --eval ../shared/data/emotion-circuits/prompted_test_accepted.jsonl \\
        --out emofast/data/judge_head
    emofast judge eval --data ../shared/data/emotion-circuits/prompted_test_accepted.jsonl
"""
from __future__ import annotations

import shlex
from pathlib import Path

from ..data import load_dataset
from ..eval import EmotionJudge, JudgeScore, train_judge
from ..validation import arg, non_negative, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("judge", help="train the offline emotion judge's head, or evaluate one")
    cmds = p.add_subparsers(dest="judge_command", required=True)
    t = cmds.add_parser("train", help="fit the linear head on labelled texts and write it")
    t.add_argument("--train", required=True,
                   help="labelled JSONL (any emofast.data format) to fit on")
    t.add_argument("--eval",
                   help="labelled JSONL to report held-out accuracy on (recorded in the JSON)")
    t.add_argument("--out", required=True,
                   help="output prefix: writes PREFIX.safetensors and PREFIX.json")
    t.add_argument("--l2", type=arg(non_negative), default=1e-5, metavar="X",
                   help="L2 penalty on the weight (default 1e-5: best of 1e-2..3e-7 in 5-fold CV "
                        "grouped by skeleton on the sev split)")
    t.add_argument("--max-iter", type=arg(positive_int), default=500, metavar="N",
                   help="LBFGS iterations (default 500)")
    e = cmds.add_parser("eval", help="print per-emotion accuracy of a head on labelled texts")
    e.add_argument("--data", required=True, help="labelled JSONL (any emofast.data format)")
    e.add_argument("--head", help="head prefix or .safetensors (default: the shipped head)")
    for c in (t, e):
        c.add_argument("--batch-size", type=arg(positive_int), default=64, metavar="N",
                       help="texts per encoder batch (default 64)")
        c.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=run)


def table(score: JudgeScore, targets: list[str]) -> str:
    rows = [f"{'emotion':<10} {'n':>5} {'accuracy':>8}"]
    for label, acc in score.per_emotion.items():
        rows.append(f"{label:<10} {targets.count(label):>5} {acc:>8.4f}")
    rows.append(f"{'overall':<10} {score.n:>5} {score.accuracy:>8.4f}")
    return "\n".join(rows)


def run(args) -> int:
    if args.judge_command == "train":
        t = train_judge(args.train, args.out, eval_path=args.eval, l2=args.l2,
                        max_iter=args.max_iter, batch_size=args.batch_size,
                        progress=not args.quiet,
                        command="emofast " + shlex.join(args.argv))
        print(f"wrote {args.out}.safetensors and {args.out}.json; "
              f"train accuracy {t.train_accuracy:.4f}")
        if t.eval is not None:
            print(f"held-out {Path(args.eval).name}: accuracy {t.eval.accuracy:.4f}")
            for label, acc in t.eval.per_emotion.items():
                print(f"  {label:<10} {acc:.4f}")
        return 0
    data = load_dataset(args.data)
    judge = EmotionJudge.load(args.head)
    targets = [ex.label for ex in data]
    s = judge.score([ex.text for ex in data], targets, batch_size=args.batch_size,
                    progress=not args.quiet)
    print(f"{Path(args.data).name}: {s.n} texts")
    print(table(s, targets))
    return 0
