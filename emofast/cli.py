"""The `emofast` command: demo, directions, steer, sweep. `emofast <command> --help` explains each."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .models import DEFAULT_MODEL


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or {DEFAULT_MODEL!r} (embedded, the default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 "
                   "(default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--quantization", choices=["int8", "nf4", "fp4"], default=None,
                   help="load the model quantized with bitsandbytes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load(args):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device,
                      quantization=args.quantization, progress=not args.quiet)


def cmd_demo(args) -> int:
    from .demo import run_demo

    model = _load(args)
    r = run_demo(model, args.out, quick=not args.full, progress=not args.quiet)
    st = r["steering"]
    print(f"\nbasic4 best layer {r['basic4']['best_layer']}; sev6 best layer {r['sev6']['best_layer']}")
    print(f"{'emotion':<10} {'unsteered':>9} {'prompted':>9} {'steered':>9}   KL(steered)")
    for e, v in st["per_emotion"].items():
        print(f"{e:<10} {v['unsteered']:>9.2f} {v['prompted']:>9.2f} {v['steered']:>9.2f}   "
              f"{r['preservation'][e]['kl_mean']:.3f}")
    print(f"report: {Path(args.out) / 'index.html'}  ({r['elapsed_s']:.0f} s)")
    return 0


def cmd_directions(args) -> int:
    from . import report
    from .data import load_dataset
    from .directions import diff_of_means
    from .extract import example_activations
    from .probes import fit_probe, layer_separability, train_test_split
    from .sites import parse_layers, parse_site

    model = _load(args)
    kinds = {parse_site(s).kind for s in args.sites} if args.sites else {"resid_post"}
    if len(kinds) != 1:
        raise SystemExit(f"--sites must all be of one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    layers = [parse_site(s, model.n_layers).layer for s in args.sites] if args.sites \
        else parse_layers(args.layers, model.n_layers)
    train = load_dataset(args.train)
    kw = dict(kind=kind, layers=layers, pool=args.pool, batch_size=args.batch_size,
              progress=not args.quiet)
    acts = example_activations(model, train, **kw)                          # [L, N, width]
    labels = [e.label for e in train]
    if args.eval:
        evaluation = load_dataset(args.eval)
        tr_acts, tr_y = acts, labels
        te_acts, te_y = example_activations(model, evaluation, **kw), [e.label for e in evaluation]
    else:
        split = train_test_split(len(train), args.test_frac, seed=0, stratify=labels)
        tr_acts, tr_y = acts[:, split.train_idx], [labels[i] for i in split.train_idx]
        te_acts, te_y = acts[:, split.test_idx], [labels[i] for i in split.test_idx]
    sep = layer_separability(tr_acts, tr_y, te_acts, te_y, layers=layers, progress=not args.quiet)
    baseline = args.baseline or ("neutral" if "neutral" in labels else "mean")
    dirs = diff_of_means(tr_acts, tr_y, baseline=baseline, layers=layers, site=kind,
                         method=f"{args.pool}_pooled", meta={"model": model.name, "train": str(args.train)})
    out = Path(args.out)
    dirs.save(out)
    probe = fit_probe(tr_acts[layers.index(sep.best_layer)], tr_y)
    probe.save(out / "probe")
    metrics = {**sep.to_json(), "site": kind, "pool": args.pool, "baseline": baseline,
               "n_train": len(tr_y), "n_eval": len(te_y),
               "evaluated_on": str(args.eval) if args.eval else f"held-out {args.test_frac:g} of --train"}
    report.write_json(out / "metrics.json", metrics)
    report.plot_layer_curves(out / "separability.png", sep.layers,
                             {"linear probe": sep.probe_acc, "nearest direction": sep.centroid_acc},
                             title=f"{Path(str(args.train)).name}: accuracy by layer",
                             chance=1 / len(set(labels)))
    best = sep.layers.index(sep.best_layer)
    print(f"best layer {sep.best_layer}: probe {sep.probe_acc[best]:.3f}, "
          f"nearest direction {sep.centroid_acc[best]:.3f} ({metrics['evaluated_on']})")
    print(f"wrote {out}/directions.safetensors, metrics.json, probe.safetensors, separability.png")
    return 0


def cmd_steer(args) -> int:
    from .extract import default_directions
    from .sites import parse_layers
    from .steer import Steering, generate

    model = _load(args)
    dirs = default_directions(model, args.directions, progress=not args.quiet)
    layers = parse_layers(args.layers, model.n_layers)
    positions = int(args.positions) if args.positions.isdigit() else args.positions
    steering = Steering.single(dirs, args.emotion, layers, args.alpha, model.n_layers,
                               positions=positions, scale=args.scale)
    prompts = list(args.prompt)
    kw = dict(max_new_tokens=args.max_new_tokens, chat=not args.no_chat, progress=False)
    texts = generate(model, prompts, steering=steering, **kw)
    plain = generate(model, prompts, **kw) if args.compare else [None] * len(prompts)
    for prompt, text, base in zip(prompts, texts, plain):
        print(f"> {prompt}")
        if base is not None:
            print(f"[unsteered] {base}")
        print(f"[{args.emotion} x{args.alpha:g} at L{layers[0]}-{layers[-1]}] {text}\n")
    return 0


def cmd_sweep(args) -> int:
    from .sweep_cli import cmd_sweep as run

    return run(args, _load(args))


def cmd_discover(args) -> int:
    from .discover_run import DiscoverConfig, run_discover

    model = _load(args)
    cfg = DiscoverConfig.preset(not args.full)
    cfg.circuits = not args.no_circuits
    r = run_discover(model, args.out, quick=not args.full, config=cfg, progress=not args.quiet)
    print(f"{'emotion':<10} {'top head':>9} {'effect':>8} {'spearman':>8} {'top10':>6}")
    for e, x in r["emotions"].items():
        he = x["head_effect"]
        top = int(he.flatten().argmin())
        print(f"{e:<10} {f'L{top // he.shape[1]}.H{top % he.shape[1]}':>9} "
              f"{he.min().item():>8.3f} {x['spearman_all_heads']:>8.2f} {x['top10_found']:>4}/10")
    if "circuits" in r:
        print(f"\n{'emotion':<10} {'modulation':>10} {'steering':>9} {'prompting':>9}")
        for e, v in r["circuits"]["control"]["per_emotion"].items():
            print(f"{e:<10} {v['modulation']:>10.2f} {v['steering']:>9.2f} {v['prompting']:>9.2f}")
    print(f"report: {Path(args.out) / 'index.html'}  ({r['elapsed_s']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emofast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="directions, separability and a judged steering grid, as a report")
    _model_args(p)
    p.add_argument("--out", default="emofast-demo", help="report folder (default: emofast-demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, ~3 min on 2 CPU cores (default)")
    mode.add_argument("--full", action="store_true", help="every sev6 skeleton and a larger grid")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("directions", help="emotion directions and layer-wise separability")
    _model_args(p)
    p.add_argument("--train", required=True, help="JSONL {text, label[, span]} or a built-in name (basic4)")
    p.add_argument("--eval", default=None, help="JSONL to measure accuracy on (default: a held-out "
                   "split of --train)")
    p.add_argument("--sites", nargs="*", default=None,
                   help="site names of one kind, e.g. L10.resid_post L12.resid_post "
                   "(default: resid_post at --layers)")
    p.add_argument("--layers", default="all", help="'all', '12', '0,4,8' or '10-19' (default all)")
    p.add_argument("--pool", choices=["mean", "last", "span"], default="mean",
                   help="tokens per text: mean over the text (default), the last token, or the "
                   "emotion-bearing span (needs 'span' in the data)")
    p.add_argument("--baseline", default=None, help="label to subtract (default: 'neutral' if "
                   "present, else the global mean)")
    p.add_argument("--test-frac", type=float, default=0.25, help="held-out fraction without --eval")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=cmd_directions)

    p = sub.add_parser("steer", help="print text generated with an emotion direction added")
    _model_args(p)
    p.add_argument("--emotion", required=True, help="an emotion of the directions (sev6: anger, "
                   "sadness, happiness, fear, surprise, disgust)")
    p.add_argument("--layers", required=True, help="'12', '10-13' or '4,8'")
    p.add_argument("--alpha", type=float, required=True, help="strength (0 = unsteered)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--directions", default=None, help="folder from `emofast directions` or the "
                   "demo (default: sev6 directions of --model, computed once and cached)")
    p.add_argument("--scale", choices=["rms", "abs"], default="rms",
                   help="rms: delta = alpha * v * rms(h) (default); abs: alpha * v")
    p.add_argument("--positions", default="all", help="all, prompt, generated, or k (last k "
                   "positions of each forward)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--compare", action="store_true", help="also print the unsteered reply")
    p.set_defaults(fn=cmd_steer)

    p = sub.add_parser("discover", help="per-emotion head/neuron discovery, top-k curves, "
                       "circuits and modulation vs steering vs prompting, as a report")
    _model_args(p)
    p.add_argument("--out", default="emofast-discover", help="report folder")
    p.add_argument("--full", action="store_true", help="more prompts and the full circuit "
                   "comparison (default: quick)")
    p.add_argument("--no-circuits", action="store_true", help="skip the circuit comparison")
    p.set_defaults(fn=cmd_discover)

    from .sweep_cli import add_arguments as sweep_arguments

    p = sub.add_parser("sweep", help="exact ablation sweep: prompts x variants x metric, to a "
                       "resumable results folder")
    _model_args(p)
    sweep_arguments(p)
    p.set_defaults(fn=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, OSError, ImportError) as e:
        print(f"emofast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
