"""`emofast sweep`: the command-line face of `emofast.sweep` (options: `emofast sweep --help`).

    emofast sweep --prompts prompts.jsonl --variants heads --metric kl --out runs/heads
    emofast sweep --prompts basic4 --limit 8 --variants neurons:20-29 --mode mean \\
                  --metric logit_diff --tokens-a " happy" --tokens-b " sad" --out runs/n
    emofast sweep --prompts basic4 --variants steer:anger,happiness:10-19 --alphas 2,4,8 \\
                  --metric projection --emotion anger --out runs/steer

Writes DIR/results.json (format: `emofast.sweep_store.write_results`) and results.safetensors;
an interrupted run resumes when started again with the same arguments.
"""
from __future__ import annotations

import json
from pathlib import Path

from .data import BUILTIN, load_dataset, load_skeletons, read_jsonl, sev_prompts
from .models import Model
from .planner import Edit
from .sites import parse_layers
from .sweep import KL, LogitDiff, LogProb, Metric, ProbeProb, Projection, Steer, steer_grid, sweep
from .sweep_steer import check_resid_post

METRICS = ("kl", "logit_diff", "logprob", "projection", "probe")


def load_prompts(spec: str, model: Model, *, chat: bool, limit: int | None) -> list[str]:
    """Prompt texts from a built-in dataset (basic4: its sentences; sev6: the uninstructed SEV
    prompts), a .txt file (one per line) or a JSONL file (key "prompt" or "text")."""
    if spec == "sev6":
        prompts = sev_prompts(load_skeletons(spec), emotions=None, instructed=False)
        texts = [model.chat_text(p) if chat else p.user for p in prompts]
    else:
        path = Path(spec)
        if spec in BUILTIN:
            texts = [e.text for e in load_dataset(spec)]
        elif path.suffix == ".txt" and path.is_file():
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.is_file():
            texts = []
            for lineno, obj in read_jsonl(path):
                key = "prompt" if "prompt" in obj else "text"
                if key not in obj:
                    raise ValueError(f"{path}:{lineno}: needs a 'prompt' or 'text' key, has "
                                     f"{sorted(obj)}")
                texts.append(str(obj[key]))
        else:
            raise FileNotFoundError(f"--prompts {spec!r} is neither a built-in dataset "
                                    f"({', '.join(BUILTIN)}) nor a file")
        texts = [model.chat_text(t) for t in texts] if chat else texts
    if not texts:
        raise ValueError(f"--prompts {spec!r} holds no prompts")
    return texts[:limit] if limit else texts


def variants_from_spec(spec: str, model: Model, mode: str, args=None) -> list[list]:
    """"heads": one variant per (layer, head); "neurons:LAYERS" (e.g. neurons:20-29): one per
    (layer, neuron); "steer:EMOTIONS:LAYERS" (e.g. steer:anger,happiness:10-19): one Steer per
    (emotion, layer, --alphas); FILE.json: [{"edits": [...]}], an edit {"layer", "site",
    "unit"} (units of one (layer, site) merged into one edit) or a Steer {"layer", "site":
    "resid_post", "emotion" (or "label", as results.json writes it), "alpha"[, "rms"]}. Steers
    use the --directions of `args` (see `directions`); scopes come from --positions."""
    if spec == "heads":
        return [[Edit(layer, "attn_z", [h], mode)] for layer in range(model.n_layers)
                for h in range(model.n_heads)]
    if spec.startswith("neurons:"):
        layers = parse_layers(spec.split(":", 1)[1], model.n_layers)
        return [[Edit(layer, "mlp_act", [n], mode)] for layer in layers
                for n in range(model.d_mlp)]
    if spec.startswith("steer:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[1]:
            raise ValueError(f"--variants {spec!r}: write steer:EMOTIONS:LAYERS, e.g. "
                             "steer:anger,happiness:10-19")
        layers = parse_layers(parts[2], model.n_layers)
        return steer_grid(directions(args, model), parts[1].split(","), layers,
                          _floats(args.alphas, "--alphas"), rms=args.rms)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--variants {spec!r} is not 'heads', 'neurons:LAYERS', "
                                "'steer:EMOTIONS:LAYERS' or a JSON file")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{\"edits\": [...]}}")
    out = []
    for i, item in enumerate(items):
        edits = item.get("edits") if isinstance(item, dict) else None
        if not isinstance(edits, list):
            raise ValueError(f"{path}: variant {i} needs an 'edits' list, got {item!r}")
        units: dict[tuple[int, str], list[int]] = {}
        steers = []
        for e in edits:
            if isinstance(e, dict) and e.get("site") == "resid_post":
                emotion = e.get("emotion", e.get("label"))
                if not {"layer", "alpha"} <= set(e) or emotion is None:
                    raise ValueError(f"{path}: variant {i}: a resid_post edit (a Steer) needs "
                                     f"layer, emotion, alpha; got {e!r}")
                if not isinstance(e.get("rms", False), bool):
                    raise ValueError(f"{path}: variant {i}: rms must be true or false, got "
                                     f"{e['rms']!r}")
                layer, dirs = int(e["layer"]), directions(args, model)
                check_resid_post(dirs)
                steers.append(Steer(layer, dirs.get(emotion, layer),
                                    float(e["alpha"]), e.get("rms", False), label=str(emotion)))
                continue
            if not isinstance(e, dict) or not {"layer", "site", "unit"} <= set(e):
                raise ValueError(f"{path}: variant {i}: each edit needs layer, site, unit; "
                                 f"got {e!r}")
            units.setdefault((int(e["layer"]), str(e["site"])), []).append(int(e["unit"]))
        out.append([Edit(layer, site, us, mode) for (layer, site), us in units.items()] + steers)
    return out


def directions(args, model: Model):
    """--directions (a folder from `emofast directions`), else the model's sev6 directions
    (computed once, cached); loaded once per command."""
    if args is None:
        raise ValueError("steering variants need the parsed arguments (--directions, --alphas)")
    if getattr(args, "_directions", None) is None:
        from .extract import default_directions

        args._directions = default_directions(model, args.directions, progress=not args.quiet)
    return args._directions


def _floats(spec: str, what: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"{what} {spec!r}: give comma-separated numbers, e.g. 2,4,8") from None


def token_ids(spec: str, model: Model, what: str) -> list[int]:
    """Comma-separated items, each a token id or a text that is exactly one token."""
    ids = []
    for item in spec.split(","):
        if item.strip().isdigit():
            ids.append(int(item))
            continue
        toks = model.tokenizer(item, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"{what}: {item!r} is {len(toks)} tokens {toks}; give single-token "
                             "texts (mind the leading space) or token ids")
        ids.append(toks[0])
    return ids


def metric_from_args(args, model: Model) -> Metric:
    if args.metric == "kl":
        return KL()
    if args.metric == "logit_diff":
        if not (args.tokens_a and args.tokens_b):
            raise ValueError("--metric logit_diff needs --tokens-a and --tokens-b")
        return LogitDiff(token_ids(args.tokens_a, model, "--tokens-a"),
                         token_ids(args.tokens_b, model, "--tokens-b"))
    if args.metric == "logprob":
        if not args.tokens_a:
            raise ValueError("--metric logprob needs --tokens-a (the target tokens)")
        return LogProb(token_ids(args.tokens_a, model, "--tokens-a"))
    if not args.emotion:
        raise ValueError(f"--metric {args.metric} needs --emotion")
    layer = model.n_layers - 1 if args.layer is None else args.layer
    if args.metric == "projection":
        return Projection(directions(args, model).get(args.emotion, layer), layer=layer)
    if not args.probe:
        raise ValueError("--metric probe needs --probe (a probe saved by `emofast directions`, "
                         "e.g. DIR/probe, fitted on resid_post of --layer)")
    from .probes import LinearProbe

    return ProbeProb(LinearProbe.load(args.probe), args.emotion, layer=layer)


def add_arguments(p) -> None:
    p.add_argument("--prompts", required=True, help="FILE.jsonl ('prompt' or 'text' per line), "
                   "FILE.txt (one per line) or a built-in dataset (basic4, sev6)")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    p.add_argument("--chat", action="store_true", help="apply the chat template (default: plain "
                   "text with the tokenizer's defaults)")
    p.add_argument("--variants", required=True, help="heads | neurons:LAYERS (e.g. "
                   "neurons:20-29) | steer:EMOTIONS:LAYERS (e.g. steer:anger,happiness:10-19; one "
                   "variant per emotion, layer and --alphas) | FILE.json ([{\"edits\": "
                   "[{\"layer\", \"site\", \"unit\"}]}]; a steer: {\"layer\", \"site\": "
                   "\"resid_post\", \"emotion\", \"alpha\"})")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero",
                   help="zero or mean ablation (mean over every real token of the prompts)")
    p.add_argument("--alphas", default="4", help="steer: comma-separated strengths (default 4)")
    p.add_argument("--rms", action="store_true", help="steer: scale by each token's residual "
                   "RMS (alpha * rms(h) * v, as arXiv 2510.11328)")
    p.add_argument("--positions", default="all", help="all | last | p (real tokens >= p)")
    p.add_argument("--metric", choices=METRICS, default="kl",
                   help="kl: KL(clean || edited) of the next token at the last position; "
                   "logit_diff: mean logit of --tokens-a minus --tokens-b; logprob: log P(next "
                   "in --tokens-a); projection: final residual on the --emotion direction; "
                   "probe: a probe's probability of --emotion")
    p.add_argument("--tokens-a", default=None, help="comma-separated token ids or one-token texts")
    p.add_argument("--tokens-b", default=None, help="as --tokens-a (logit_diff)")
    p.add_argument("--emotion", default=None, help="projection/probe: the emotion")
    p.add_argument("--layer", type=int, default=None, help="projection/probe: resid_post layer "
                   "read (default: the last)")
    p.add_argument("--directions", default=None, help="projection and steer: folder from "
                   "`emofast directions` (default: the model's sev6 directions, cached)")
    p.add_argument("--probe", default=None, help="probe: path prefix from `emofast directions`")
    p.add_argument("--engine", choices=["batched", "loop"], default="batched")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward")
    p.add_argument("--memory-budget", type=float, default=None,
                   help="GiB per batched chunk (default: a quarter of free memory)")
    p.add_argument("--out", required=True, help="output folder (resumable)")


def cmd_sweep(args, model: Model) -> int:
    positions = int(args.positions) if args.positions.isdigit() else args.positions
    prompts = load_prompts(args.prompts, model, chat=args.chat, limit=args.limit)
    variants = variants_from_spec(args.variants, model, args.mode, args)
    metric = metric_from_args(args, model)
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    res = sweep(model, prompts, variants, metric, engine=args.engine, positions=positions,
                batch_size=args.batch_size, memory_budget=budget, out=args.out,
                progress=not args.quiet)
    n = len(variants)
    print(f"{n} variants x {len(prompts)} prompts, {args.engine}: {res.elapsed_s:.1f} s "
          f"({n / res.elapsed_s:.1f} variants/s" +
          (f", {res.resumed} resumed from {args.out}" if res.resumed else "") + ")")
    top = res.values.abs().argsort(descending=True)[:5].tolist()
    print("largest |value|: " + ", ".join(f"#{i} {res.values[i]:.4g}" for i in top))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0
