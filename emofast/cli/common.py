"""What every subcommand shares: the model flags, config dataclasses as flags, deprecations.

`add_config_flags(parser, Config)` gives each field of a pipeline config one flag
(`n_train_skeletons` -> `--n-train-skeletons`; a bool True by default -> `--no-<name>`; tuples
comma-separated, tuples of tuples `;`-separated; Literal fields as choices) with the field's
help; `config_from_args(args, Config, base)` applies only the flags given on top of a preset.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
import warnings
from typing import Any, Literal

from ..models import DEFAULT_MODEL, Model, load_model
from ..models.loading import DTYPES
from ..sites import Scope
from ..processes import local_device
from ..validation import arg, device


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or {DEFAULT_MODEL!r} (embedded, the default)")
    p.add_argument("--device", default=None, type=arg(device),
                   help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), metavar="DTYPE",
                   help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on "
                   "CUDA)")
    p.add_argument("--quantization", choices=["int8", "nf4", "fp4"], default=None,
                   help="load the model quantized with bitsandbytes")
    p.add_argument("--device-map", default=None, type=device_map_flag, metavar="MAP",
                   help="a model larger than one device (instead of --device): auto, balanced, "
                   "sequential, or JSON {module name: device} (accelerate)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def device_map_flag(text: str):
    """--device-map: a strategy name, or a JSON object of module name -> device."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--device-map {text!r} is not valid JSON: {e}") from None


def load(args) -> Model:
    """The model of the flags; under torchrun with CUDA each rank defaults to cuda:LOCAL_RANK."""
    device_map = getattr(args, "device_map", None)
    device = args.device or (None if device_map is not None else local_device())
    return load_model(args.model, dtype=args.dtype, device=device, device_map=device_map,
                      quantization=args.quantization, progress=not args.quiet)


def deprecated(command: str, old: str, new: str) -> None:
    """Say once, on stderr and as a DeprecationWarning, that flag `old` is now `new`."""
    message = f"emofast {command}: {old} is deprecated (one release): use {new}"
    print(f"warning: {message}", file=sys.stderr)
    warnings.warn(message, DeprecationWarning, stacklevel=2)


def scope_flag(args, command: str, int_means: str) -> Scope:
    """--scope, or the deprecated --positions with a warning; int_means says what an int used
    to mean for this command: "last" (steer: the last k positions) or "from" (sweep: real
    tokens >= p)."""
    if args.positions is None:
        return Scope.parse(args.scope or "all")
    if args.scope is not None:
        raise ValueError("give --scope only (--positions is its deprecated old name)")
    new = Scope(int_means, int(args.positions)) if args.positions.isdigit() else \
        Scope.parse(args.positions)
    deprecated(command, f"--positions {args.positions}", f"--scope {new}")
    return new


# ---- config dataclasses as flags ----
def _parser_for(tp) -> tuple[Any, dict]:
    """(type converter, extra add_argument kwargs) for a field annotation."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        convert, extra = _parser_for(inner[0])
        return (lambda s: None if s.lower() in ("none", "") else convert(s)), extra
    if typing.get_origin(tp) is Literal:
        return str, {"choices": list(args)}
    if typing.get_origin(tp) is tuple:
        item = args[0]
        if typing.get_origin(item) is tuple:  # tuple of tuples: groups split by ';'
            inner = typing.get_args(item)[0]
            return (lambda s: tuple(tuple(inner(x) for x in g.split(",")) for g in s.split(";")
                                    if g)), {}
        if item is str:  # names: space- or comma-separated
            return (lambda s: tuple(x for x in s.split(",") if x)), {"nargs": "*"}
        return (lambda s: tuple(item(x) for x in s.split(",") if x)), {}
    return tp, {}


def add_config_flags(p: argparse.ArgumentParser, config_cls, *, skip: tuple[str, ...] = ()
                     ) -> None:
    """One flag per field of `config_cls` (see the module docstring); defaults come from the
    preset chosen later, so every flag defaults to "not given"."""
    hints = typing.get_type_hints(config_cls)
    preset = " (defaults: the quick preset)" if hasattr(config_cls, "full") else ""
    group = p.add_argument_group(f"{config_cls.__name__} fields{preset}")
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag, helptext = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if hints[f.name] is bool:
            if f.default is True:
                group.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name,
                                   action="store_false", default=argparse.SUPPRESS,
                                   help=f"not: {helptext}")
            else:
                group.add_argument(flag, dest=f.name, action="store_true",
                                   default=argparse.SUPPRESS, help=helptext)
            continue
        convert, extra = _parser_for(hints[f.name])
        if "choices" not in extra:
            extra["metavar"] = _metavar(hints[f.name])
        default = "" if f.default is None else f" (default {_show(f.default)})"
        group.add_argument(flag, dest=f.name, type=convert, default=argparse.SUPPRESS,
                           help=helptext + default, **extra)


def _metavar(tp) -> str:
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    tp = inner[0] if typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType" \
        else tp
    if typing.get_origin(tp) is tuple:
        return "NAME" if typing.get_args(tp)[0] is str else "LIST"
    return {int: "N", float: "X"}.get(tp, "TEXT")


def _show(value) -> str:
    def one(x):
        return f"{x:g}" if isinstance(x, float) else str(x)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ";".join(",".join(one(x) for x in g) for g in value)
    if isinstance(value, tuple):
        return ",".join(one(x) for x in value)
    return one(value)


def config_from_args(args, config_cls, base=None):
    """`base` (default: the class's defaults, the quick preset) with the fields whose flags
    were given."""
    given = {}
    for f in dataclasses.fields(config_cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(value, list):  # nargs="*": a tuple per word (None: "none"), flattened
                parts = [part for part in value if part is not None]
                value = tuple(x for part in parts for x in part) if parts else None
            given[f.name] = value
    return config_cls(**given) if base is None else dataclasses.replace(base, **given)
