"""`emofast steer`: print text generated with an emotion direction added (emofast.interventions)."""
from __future__ import annotations

from ..analysis import default_directions
from ..data import EMOTIONS6
from ..interventions import Steering, generate
from ..interventions.generation import check_fits
from ..interventions.steering import SCOPES
from ..sites import parse_layers
from ..validation import arg, finite, positive_int
from . import common
from .common import add_model_flags, scope_flag


def add_parser(sub) -> None:
    p = sub.add_parser("steer", help="print text generated with an emotion direction added")
    add_model_flags(p)
    p.add_argument("--emotion", required=True, help="an emotion of the directions (sev6: anger, "
                   "sadness, happiness, fear, surprise, disgust)")
    p.add_argument("--layers", required=True, help="'12', '10-13' or '4,8'")
    p.add_argument("--alpha", type=arg(finite), required=True, metavar="X",
                   help="strength (0 = unsteered)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--directions", default=None, help="folder from `emofast directions` or the "
                   "demo (default: sev6 directions of --model, computed once and cached)")
    p.add_argument("--scale", choices=["rms", "abs"], default="rms",
                   help="rms: delta = alpha * v * rms(h) (default); abs: alpha * v")
    p.add_argument("--scope", default=None, help="where to steer: all "
                   "(default), prompt, generated, or last:K (the last K positions of each "
                   "forward)")
    p.add_argument("--positions", default=None, help="deprecated: use --scope (an int k meant "
                   "last:k)")
    p.add_argument("--max-new-tokens", type=arg(positive_int), default=40, metavar="N")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--compare", action="store_true", help="also print the unsteered reply")
    p.set_defaults(fn=run)


def run(args) -> int:
    scope = scope_flag(args, "steer", int_means="last")
    scope.require("steering", *SCOPES)
    if args.directions is None and args.emotion not in EMOTIONS6:
        raise ValueError(f"--emotion {args.emotion!r}: the default sev6 directions have "
                         f"{', '.join(EMOTIONS6)}")
    model = common.load(args)
    layers = parse_layers(args.layers, model.n_layers)  # before directions are computed
    check_fits(model, args.prompt, args.max_new_tokens, chat=not args.no_chat)
    dirs = default_directions(model, args.directions, progress=not args.quiet)
    steering = Steering.single(dirs, args.emotion, layers, args.alpha, model.n_layers,
                               scope=scope, scale=args.scale)
    prompts = list(args.prompt)
    kw = dict(max_new_tokens=args.max_new_tokens, chat=not args.no_chat, progress=False)
    texts = generate(model, prompts, intervention=steering, **kw)
    plain = generate(model, prompts, **kw) if args.compare else [None] * len(prompts)
    for prompt, text, base in zip(prompts, texts, plain):
        print(f"> {prompt}")
        if base is not None:
            print(f"[unsteered] {base}")
        print(f"[{args.emotion} x{args.alpha:g} at layers {args.layers}] {text}\n")
    return 0
