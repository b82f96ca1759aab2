"""The one validation layer: API arguments and CLI options are checked by the same functions,
before any model loads or any direction is computed.

    finite(alpha, "alpha")              # a real number, not nan/inf/bool     -> float
    positive_int(batch_size, "batch_size")                                     # -> int >= 1
    integer(layer, "layer", lo=0, hi=n_layers - 1)                            # -> int
    texts(prompts, "prompts")           # a list of strings, never one string  -> list[str]
    device("cuda")                      # exists on this machine               -> "cuda"

Each raises ValueError (TypeError for a wrong kind of value) whose message names the argument
and says what to give. `arg(positive_int)` is the same check as an argparse `type=`, so a bad
flag is refused by the parser with its name, before the command runs.
"""
from __future__ import annotations

import argparse
import math
import numbers
import operator
from typing import Any, Callable, Sequence

import torch


class NonFiniteError(ValueError):
    """A forward under an intervention produced inf or nan."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what was saved and how to resume."""


def finite(x: Any, name: str) -> float:
    """x as a float; refuses bools, non-numbers, nan and inf."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, torch.Tensor)) or (
            isinstance(x, torch.Tensor) and x.numel() != 1):
        raise TypeError(f"{name} must be a number, got {x!r}")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def finite_all(xs: Sequence, name: str) -> list[float]:
    """Every entry finite (see `finite`); the list must not be empty."""
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence) or not len(xs):
        raise ValueError(f"{name} must be a non-empty list of numbers, got {xs!r}")
    return [finite(x, f"{name}[{i}]") for i, x in enumerate(xs)]


def integer(x: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """x as an int in [lo, hi]; refuses bools, floats (3.7 and 3.0 alike) and strings."""
    try:
        if isinstance(x, bool):
            raise TypeError
        x = operator.index(x)  # ints, numpy ints, integer 0-d tensors; never floats
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {x!r}") from None
    if lo is not None and x < lo or hi is not None and x > hi:
        where = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be an integer {where}, got {x}")
    return x


def positive_int(x: Any, name: str) -> int:
    """An integer >= 1 (batch sizes, limits, token counts)."""
    return integer(x, name, lo=1)


def positive(x: Any, name: str) -> float:
    """A finite number > 0 (memory budgets, learning rates)."""
    value = finite(x, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value:g}")
    return value


def non_negative(x: Any, name: str) -> float:
    """A finite number >= 0 (regularisation strengths)."""
    value = finite(x, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value:g}")
    return value


def text(x: Any, name: str) -> str:
    if not isinstance(x, str):
        raise TypeError(f"{name} must be a string, got {type(x).__name__} {x!r}")
    return x


def texts(xs: Any, name: str) -> list[str]:
    """A non-empty list of strings; one plain string is refused (it would be read one row per
    character)."""
    if isinstance(xs, str):
        raise TypeError(f"{name} must be a list of texts, got one string: wrap it as [{xs[:30]!r}]")
    if not isinstance(xs, Sequence) or not len(xs):
        raise ValueError(f"{name} must be a non-empty list of texts, got {xs!r}")
    for i, x in enumerate(xs):
        text(x, f"{name}[{i}]")
    return list(xs)


def device(spec: str | torch.device | None, name: str = "device") -> str:
    """A device this machine has: "cpu", "cuda", "cuda:N" (N < the GPU count) or "mps"."""
    if spec is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown {name} {spec!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{name} {spec!r}: this machine has no CUDA device; use cpu")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{name} {spec!r}: this machine has {n} CUDA device(s) "
                             f"(cuda:0..cuda:{n - 1})")
        return str(dev)
    if dev.type == "mps" and torch.backends.mps.is_available():
        return "mps"
    raise ValueError(f"{name} {spec!r} is not available here: use cpu or cuda")


def arg(check: Callable, convert: Callable = None) -> Callable[[str], Any]:
    """An argparse `type=` running `check` on the flag's value (converted by `convert`: int for
    integer checks, float for number checks, by default from the check)."""
    convert = convert or (int if check in (integer, positive_int) else float
                          if check in (finite, positive, non_negative) else str)

    def parse(s: str):
        try:
            value = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{s!r} is not {'an integer' if convert is int else 'a number'}") from None
        try:
            return check(value, "the value")
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e).replace("the value ", "")) from None
    parse.__name__ = check.__name__  # argparse names the type in its messages
    return parse


def numbers_list(spec: str, what: str) -> list[float]:
    """Comma-separated finite numbers ("2,4,8") from a flag."""
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"{what} {spec!r}: give comma-separated numbers, e.g. 2,4,8") from None
    if len(set(values)) != len(values):
        raise ValueError(f"{what} {spec!r}: each number once (a repeat would run twice)")
    return finite_all(values, what)
