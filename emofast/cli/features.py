"""`emofast features`: the SAE emotion-features pipeline (emofast.pipelines.features): causal
tracing per emotion and phase, a feature steering for recognition chosen on a few training texts
(saved to DIR/steering), its held-out evaluation against calibration and a matched random
control, as a report folder."""
from __future__ import annotations

from pathlib import Path

from ..pipelines import FeaturesConfig, run_features
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("features", help="SAE emotion features: causal tracing per phase and a "
                       "recognition feature steering with its controls, as a report")
    add_model_flags(p)
    p.add_argument("--out", default="emofast-features", help="report folder")
    p.add_argument("--full", action="store_true", help="the full preset (more held-out texts, "
                   "candidates and steering grid points; default: quick)")
    add_config_flags(p, FeaturesConfig)
    p.set_defaults(fn=run)


def run(args) -> int:
    cfg = config_from_args(args, FeaturesConfig,
                           FeaturesConfig.full() if args.full else FeaturesConfig())
    r = run_features(common.load(args), cfg, args.out, progress=not args.quiet)
    c = r.choice
    if c.chosen is None:
        print(f"no steering within the neutral-KL budget {cfg.kl_budget} nats")
    else:
        print(f"steering: top {c.chosen.per_emotion} per emotion ({c.chosen.n_features} "
              f"features) x{c.chosen.factor:g}; training accuracy "
              f"{c.unsteered_train_accuracy:.2f} -> {c.chosen.train_accuracy:.2f}, neutral KL "
              f"{c.chosen.kl_neutral:.3f}"
              + ("" if c.chosen.train_accuracy > c.unsteered_train_accuracy else
                 " (does not beat the unsteered model on the training texts)")
              + f"; saved to {Path(args.out) / 'steering'}")
    print(f"{'data':<34} {'plain':>6} {'calib':>6} {'steer':>6} {'random':>6}")
    for e in r.evaluations:
        acc = e.accuracies()
        cells = " ".join("     -" if v is None else f"{v:>6.2f}" for v in acc.values())
        print(f"{e.data[-34:]:<34} {cells}")
    print(f"report: {Path(args.out) / 'index.html'}  ({r.elapsed_s:.0f} s)")
    return 0
