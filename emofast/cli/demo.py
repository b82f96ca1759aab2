"""`emofast demo`: the demo pipeline (emofast.pipelines.demo) on one model, as a report folder."""
from __future__ import annotations

from pathlib import Path

from ..pipelines import DemoConfig, run_demo
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="directions, separability and a judged steering grid, as a "
                       "report")
    add_model_flags(p)
    p.add_argument("--out", default="emofast-demo", help="report folder (default: emofast-demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick preset, ~3 min on 2 CPU "
                      "cores (default)")
    mode.add_argument("--full", action="store_true", help="the full preset: every sev6 skeleton "
                      "and a larger grid")
    add_config_flags(p, DemoConfig)
    p.set_defaults(fn=run)


def run(args) -> int:
    cfg = config_from_args(args, DemoConfig, DemoConfig.full() if args.full else DemoConfig())
    r = run_demo(common.load(args), cfg, args.out, progress=not args.quiet)
    print(f"\nbasic4 best layer {r.basic4.separability.best_layer}; "
          f"sev6 best layer {r.sev6.separability.best_layer}")
    print(f"{'emotion':<10} {'unsteered':>9} {'prompted':>9} {'steered':>9}   KL(steered)")
    for e, v in r.comparison.per_emotion.items():
        print(f"{e:<10} {v.unsteered:>9.2f} {v.prompted:>9.2f} {v.steered:>9.2f}   "
              f"{r.preservation[e].kl_mean:.3f}")
    print(f"report: {Path(args.out) / 'index.html'}  ({r.elapsed_s:.0f} s)")
    return 0
