"""`emofast sweep`: the command-line face of `emofast.sweeps.sweep` (`emofast sweep --help`).

    emofast sweep --prompts prompts.jsonl --variants heads --metric kl --out runs/heads
    emofast sweep --prompts basic4 --limit 8 --variants neurons:20-29 --mode mean \\
                  --metric logit_diff --tokens-a " happy" --tokens-b " sad" --out runs/n
    emofast sweep --prompts basic4 --variants steer:anger,happiness:10-19 --alphas 2,4,8 \\
                  --scale rms --metric projection --emotion anger --out runs/steer

Writes DIR/results.json (format: `emofast.sweeps.store.write_results`) and results.safetensors;
an interrupted run resumes when started again with the same arguments. The spellings of
--prompts, --variants and --metric are `emofast.sweeps.specs`.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from ..analysis import default_directions
from ..data import EMOTIONS6
from ..sweeps import sweep
from ..processes import is_rank0
from ..sweeps.specs import METRICS, load_prompts, metric_from_spec, variants_from_spec
from . import common
from ..validation import arg, integer, numbers_list, positive, positive_int
from .common import add_model_flags, deprecated, scope_flag


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="exact ablation sweep: prompts x variants x metric, to a "
                       "resumable results folder")
    add_model_flags(p)
    p.add_argument("--prompts", required=True, help="FILE.jsonl ('prompt' or 'text' per line), "
                   "FILE.txt (one per line) or a built-in dataset (basic4, sev6)")
    p.add_argument("--limit", type=arg(positive_int), default=None, metavar="N",
                   help="use the first N prompts")
    p.add_argument("--chat", action="store_true", help="apply the chat template (default: plain "
                   "text with the tokenizer's defaults)")
    p.add_argument("--variants", required=True, help="heads | neurons:LAYERS (e.g. "
                   "neurons:20-29) | steer:EMOTIONS:LAYERS (e.g. steer:anger,happiness:10-19; one "
                   "variant per emotion, layer and --alphas) | FILE.json ([{\"edits\": "
                   "[{\"layer\", \"site\", \"unit\"}]}]; a steer: {\"layer\", \"site\": "
                   "\"resid_post\", \"emotion\", \"alpha\"[, \"scale\"]})")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero",
                   help="zero or mean ablation (mean over every real token of the prompts)")
    p.add_argument("--alphas", default="4", help="steer: comma-separated strengths (default 4)")
    p.add_argument("--scale", choices=["abs", "rms"], default=None, help="steer: abs (alpha * "
                   "v, default) or rms (alpha * rms(h) * v, as arXiv 2510.11328)")
    p.add_argument("--rms", action="store_true", help="deprecated: use --scale rms")
    p.add_argument("--scope", default=None, help="all (default) | last | from:P (real tokens "
                   ">= P)")
    p.add_argument("--positions", default=None, help="deprecated: use --scope (an int p meant "
                   "from:p)")
    p.add_argument("--metric", choices=METRICS, default="kl",
                   help="kl: KL(clean || edited) of the next token at the last position; "
                   "logit_diff: mean logit of --tokens-a minus --tokens-b; logprob: log P(next "
                   "in --tokens-a); projection: final residual on the --emotion direction; "
                   "probe: a probe's probability of --emotion")
    p.add_argument("--tokens-a", default=None, help="comma-separated token ids or one-token texts")
    p.add_argument("--tokens-b", default=None, help="as --tokens-a (logit_diff)")
    p.add_argument("--emotion", default=None, help="projection/probe: the emotion")
    p.add_argument("--layer", type=arg(integer), default=None, metavar="L",
                   help="projection/probe: resid_post layer read (default: projection the last, "
                   "probe its own)")
    p.add_argument("--directions", default=None, help="projection and steer: folder from "
                   "`emofast directions` (default: the model's sev6 directions, cached)")
    p.add_argument("--probe", default=None, help="probe: path prefix from `emofast directions`")
    p.add_argument("--engine", choices=["batched", "chain", "loop"], default="batched",
                   help="chain: variants in file order, each from the previous one's state at "
                   "the first layer where they differ (top-k curves)")
    p.add_argument("--batch-size", type=arg(positive_int), default=32, metavar="N",
                   help="prompts per forward")
    p.add_argument("--memory-budget", type=arg(positive), default=None, metavar="GIB",
                   help="GiB per batched chunk (default: a quarter of free memory)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--repair", action="store_true", help="recompute exactly the parts of --out "
                   "that fail their checksum (truncated or changed files), keep the rest")
    p.set_defaults(fn=run)


def scale_of(args) -> str:
    """--scale, or the deprecated --rms with a warning."""
    if not args.rms:
        return args.scale or "abs"
    if args.scale == "abs":
        raise ValueError("--rms and --scale abs contradict each other: give --scale only")
    deprecated("sweep", "--rms", "--scale rms")
    return "rms"


# flags each metric reads, and the variant kinds --mode, --alphas and --scale apply to
_METRIC_FLAGS = {"kl": (), "logit_diff": ("tokens_a", "tokens_b"), "logprob": ("tokens_a",),
                 "projection": ("emotion", "layer", "directions"),
                 "probe": ("emotion", "layer", "probe")}
_DEFAULTS = {"mode": "zero", "alphas": "4", "scale": None}


def ignored_flags(args) -> list[str]:
    """The flags given that this metric and these variants do not read."""
    grid = args.variants.startswith("steer:")          # steers built from --alphas, --scale
    steers = grid or args.variants.endswith(".json")   # a file may hold steers (own alphas)
    used = set(_METRIC_FLAGS[args.metric]) | ({"directions"} if steers else set())
    out = [f for f in ("tokens_a", "tokens_b", "emotion", "layer", "directions", "probe")
           if getattr(args, f) is not None and f not in used]
    if grid and args.mode != _DEFAULTS["mode"]:
        out.append("mode")
    if not grid:
        out += [f for f in ("alphas", "scale") if getattr(args, f) != _DEFAULTS[f]]
    return ["--" + f.replace("_", "-") for f in out]


def check_default_emotions(args) -> None:
    """With the default sev6 directions, the emotions asked for are known before any model
    loads."""
    if args.directions is not None:
        return
    asked = [args.emotion] if args.metric == "projection" else []
    spec = args.variants.split(":")
    if spec[0] == "steer" and len(spec) == 3:  # else variants_from_spec says how to write it
        asked += spec[1].split(",")
    unknown = [e for e in asked if e and e not in EMOTIONS6]
    if unknown:
        raise ValueError(f"emotion(s) {unknown}: the default sev6 directions have "
                         f"{', '.join(EMOTIONS6)}")


def run(args) -> int:
    scope, scale = scope_flag(args, "sweep", int_means="from"), scale_of(args)
    alphas = numbers_list(args.alphas, "--alphas")
    check_default_emotions(args)
    for flag in ignored_flags(args):
        print(f"emofast sweep: warning: {flag} is ignored with --metric {args.metric} and "
              f"--variants {args.variants}", file=sys.stderr)
    model = common.load(args)
    directions = functools.cache(lambda: default_directions(model, args.directions,
                                                            progress=not args.quiet))
    prompts = load_prompts(args.prompts, model, chat=args.chat, limit=args.limit)

    def build_variants():
        return variants_from_spec(args.variants, model, args.mode, directions=directions,
                                  alphas=alphas, scale=scale)

    def build_metric():
        return metric_from_spec(args.metric, model, tokens_a=args.tokens_a,
                                tokens_b=args.tokens_b, emotion=args.emotion, layer=args.layer,
                                directions=directions, probe=args.probe)
    # the side that needs no directions is checked first, so its mistakes cost no directions
    if args.metric == "projection":
        variants, metric = build_variants(), build_metric()
    else:
        metric, variants = build_metric(), build_variants()
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    res = sweep(model, prompts, variants, metric, engine=args.engine, scope=scope,
                batch_size=args.batch_size, memory_budget=budget, out=args.out,
                progress=not args.quiet, repair=args.repair)
    n = len(variants)
    if not is_rank0():                 # under torchrun rank 0 reports for every rank
        return 0
    print(f"{n} variants x {len(prompts)} prompts, {args.engine}: {res.elapsed_s:.1f} s "
          f"({n / res.elapsed_s:.1f} variants/s" +
          (f", {res.resumed} resumed from {args.out}" if res.resumed else "") + ")")
    top = res.values.abs().argsort(descending=True)[:5].tolist()
    print("largest |value|: " + ", ".join(f"#{i} {res.values[i]:.4g}" for i in top))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0
