"""`emofast discover`: the circuits pipeline into DIR/circuits (unless --no-circuits), then the
discover pipeline into DIR, whose report.json holds the circuits report and whose index links
it."""
from __future__ import annotations

from pathlib import Path

from ..pipelines import CircuitsConfig, DiscoverConfig, run_circuits, run_discover
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("discover", help="per-emotion head/neuron discovery, top-k curves, "
                       "circuits and modulation vs steering vs prompting, as a report")
    add_model_flags(p)
    p.add_argument("--out", default="emofast-discover", help="report folder")
    p.add_argument("--full", action="store_true", help="the full presets of both pipelines: "
                   "more prompts and the full circuit comparison (default: quick)")
    p.add_argument("--no-circuits", action="store_true", help="skip the circuits pipeline "
                   "(DIR/circuits: sublayer importance, circuits, modulation vs steering vs "
                   "prompting)")
    add_config_flags(p, DiscoverConfig)
    p.set_defaults(fn=run)


def run(args) -> int:
    cfg = config_from_args(args, DiscoverConfig,
                           DiscoverConfig.full() if args.full else DiscoverConfig())
    model, progress = common.load(args), not args.quiet
    circuits = None
    if not args.no_circuits:
        circuits = run_circuits(model, CircuitsConfig.full() if args.full else CircuitsConfig(),
                                Path(args.out) / "circuits", progress=progress)
    r = run_discover(model, cfg, args.out, circuits=circuits, progress=progress)
    print(f"{'emotion':<10} {'top head':>9} {'effect':>8} {'spearman':>8} {'top10':>6}")
    for e, x in r.emotions.items():
        head, effect = x.top_head()
        print(f"{e:<10} {head:>9} {effect:>8.3f} {x.spearman_all_heads:>8.2f} "
              f"{x.top10_found:>4}/10")
    if circuits is not None:
        print(f"\n{'emotion':<10} {'modulation':>10} {'steering':>9} {'prompting':>9}")
        c = circuits.control
        for e, m in c.modulation.items():
            st = c.steering.per_emotion[e]
            print(f"{e:<10} {m.accuracy:>10.2f} {st.steered:>9.2f} {st.prompted:>9.2f}")
    print(f"report: {Path(args.out) / 'index.html'}  ({r.elapsed_s:.0f} s)")
    return 0
