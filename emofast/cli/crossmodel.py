"""`emofast crossmodel`: the small-models preprint's cross-model program on two models
(emofast.pipelines.crossmodel), as a report folder.

    emofast models install gemma3-270m          # once
    emofast crossmodel --out DIR                 # SmolLM2-135M-Instruct vs Gemma-3-270M, quick
"""
from __future__ import annotations

from pathlib import Path

from ..models import load_model
from ..pipelines import CrossModelConfig, run_crossmodel
from .common import add_config_flags, config_from_args

DEFAULT_MODELS = "smollm2-135m-instruct,gemma3-270m"


def add_parser(sub) -> None:
    p = sub.add_parser("crossmodel", help="directions, subspaces, neutral-fitted alignment, "
                       "injection and head screens on two models, against the preprint")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"two models, comma-separated: hub ids, folders or embedded aliases "
                        f"(default {DEFAULT_MODELS})")
    p.add_argument("--out", default="emofast-crossmodel", help="report folder")
    p.add_argument("--full", action="store_true", help="the full preset (default: quick)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(p, CrossModelConfig)
    p.set_defaults(fn=run)


def run(args) -> int:
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"--models takes two different models, comma-separated; got "
                         f"{args.models!r}")
    cfg = config_from_args(args, CrossModelConfig,
                           CrossModelConfig.full() if args.full else CrossModelConfig())
    models = [load_model(n, progress=not args.quiet) for n in names]   # both, before any work
    r = run_crossmodel(models, cfg, args.out, progress=not args.quiet)
    width = max(len(v["claim"]) for v in r.verdicts)
    for v in r.verdicts:
        print(f"{v['claim']:<{width}}  {v['verdict']:<15} {v['emofast']}")
    print(f"report: {Path(args.out) / 'index.html'}  ({r.elapsed_s:.0f} s)")
    return 0
