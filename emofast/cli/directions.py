"""`emofast directions`: the directions pipeline (emofast.pipelines.directions) from flags."""
from __future__ import annotations

from ..pipelines import DirectionsConfig, run_directions
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("directions", help="emotion directions and layer-wise separability")
    add_model_flags(p)
    add_config_flags(p, DirectionsConfig)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=run)


def run(args) -> int:
    if not hasattr(args, "train"):
        raise ValueError("--train is required (a JSONL file or a built-in name: basic4)")
    cfg = config_from_args(args, DirectionsConfig)
    r = run_directions(common.load(args), cfg, args.out, progress=not args.quiet)
    probe, centroid = r.best()
    print(f"best layer {r.separability.best_layer}: probe {probe:.3f}, "
          f"nearest direction {centroid:.3f} ({r.evaluated_on})")
    print(f"wrote {args.out}/directions.safetensors, metrics.json, probe.safetensors, "
          "separability.png")
    return 0
