"""`emofast quant profile`: the quantization brittleness profile (emofast.pipelines.quant) as a
report folder; `emofast quant compare`: one arm's summary.

    emofast quant profile --out runs/quant            # quick preset; --full for the full one
    emofast quant compare --scheme rtn:3:32 --layers 20-29 --modules mlp --out runs/cmp
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..pipelines import QuantConfig, run_quant_compare, run_quant_profile
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


# the config fields a one-arm comparison reads (the rest are the profile's)
COMPARE_FIELDS = ("saes", "n_general", "general_chars", "emotion", "n_emotion", "emotions",
                  "threshold", "per_emotion", "n_recognition", "batch_size", "seed")


def add_parser(sub) -> None:
    p = sub.add_parser("quant", help="quantization brittleness: do schemes that hit late layers "
                       "break emotion features, directions and circuits?")
    sub2 = p.add_subparsers(dest="quant_command", required=True)
    prof = sub2.add_parser("profile", help="many arms (thirds, windows, single layers, module "
                           "kinds, whole-model schemes, a random-layer null), the test at "
                           "matched output KL, causal and behavioural checks, as a report")
    add_model_flags(prof)
    prof.add_argument("--out", default="emofast-quant", help="report folder")
    prof.add_argument("--full", action="store_true", help="the full preset (100 null arms, "
                      "every single layer, more text; default: quick)")
    add_config_flags(prof, QuantConfig)
    prof.set_defaults(fn=run_profile)
    cmp_ = sub2.add_parser("compare", help="one arm against the reference: KL, same-top, "
                           "direction cosine, feature survival, recognition accuracy")
    add_model_flags(cmp_)
    cmp_.add_argument("--scheme", required=True, help="int8 | nf4 | fp4 | "
                      "rtn:BITS:GROUP[:sym|asym] | q4_0 | q4_1 | q5_0 | q8_0")
    cmp_.add_argument("--layers", default=None, help="layers to quantize, e.g. 20-29 or 0,5,9 "
                      "(default: all)")
    cmp_.add_argument("--modules", default=None, help="module kinds: some of attn, mlp, down "
                      "(comma-separated), or embed alone (default: attn,mlp)")
    cmp_.add_argument("--out", default="emofast-quant-compare", help="folder of summary.json")
    add_config_flags(cmp_, QuantConfig, skip=tuple(
        f.name for f in dataclasses.fields(QuantConfig) if f.name not in COMPARE_FIELDS))
    cmp_.set_defaults(fn=run_compare)


def run_profile(args) -> int:
    cfg = config_from_args(args, QuantConfig, QuantConfig.full() if args.full else QuantConfig())
    r = run_quant_profile(common.load(args), cfg, args.out, progress=not args.quiet)
    null = [a for a in r.arms if a.arm.kind == "null_check"]
    if null:
        print(f"null check ({null[0].arm.name}): mean KL {null[0].general['kl_mean']:.3g}")
    if r.test is not None:
        print(r.test["verdict"])
    print(f"report: {Path(args.out) / 'index.html'}  ({len(r.arms)} arms, {r.elapsed_s:.0f} s)")
    return 0


def run_compare(args) -> int:
    cfg = config_from_args(args, QuantConfig)
    s = run_quant_compare(common.load(args), args.scheme, args.layers, args.modules, args.out,
                          config=cfg, progress=not args.quiet)

    def f(x, spec=".4f"):
        return "-" if x is None or x != x else format(x, spec)
    print(f"{s['scheme']} on layers {s['layers'] if s['layers'] is not None else 'all'} "
          f"({','.join(s['modules'])}): {f(s['bits_per_weight'], '.3f')} bits/weight")
    print(f"  KL mean {f(s['kl_mean'])}  p99 {f(s['kl_p99'])}  same top {f(s['same_top'])}  "
          f"ppl {f(s['ppl_ref'], '.2f')} -> {f(s['ppl_quant'], '.2f')}")
    print(f"  direction cosine {f(s['direction_cosine'])} (split-half ceiling "
          f"{f(s['direction_ceiling'])})  feature survival {f(s['feature_survival'])} "
          f"(emotion {f(s['feature_survival_emotion'])}, matched random "
          f"{f(s['feature_survival_matched'])}, r >= {s['survival_threshold']})")
    print(f"  recognition accuracy {f(s['recognition_accuracy_ref'], '.3f')} -> "
          f"{f(s['recognition_accuracy_quant'], '.3f')} ({s['recognition_n']} texts)")
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0
