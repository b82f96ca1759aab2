"""Site names, the one hook context manager, and the vocabulary of edits (Scope, scale).

A site is a place in the forward pass you can read or write, named "L{layer}.{kind}":

    resid_pre   [B, T, d_model]     residual stream entering layer L
    resid_mid   [B, T, d_model]     between attention and MLP (read-only; absent with Pythia's
                                    parallel residual, where attention and MLP share resid_pre)
    resid_post  [B, T, d_model]     residual stream leaving layer L
    attn_z      [B, T, H, d_head]   per-head attention output before the output projection
    attn_out    [B, T, d_model]     attention output as it joins the residual: after the output
                                    projection (Gemma 2/3: after post_attention_layernorm)
    mlp_act     [B, T, d_mlp]       MLP activation before the down-projection
    mlp_out     [B, T, d_model]     MLP output as it joins the residual (Gemma 2/3: after
                                    post_feedforward_layernorm)

One hook signature: `fn(act, site) -> Tensor | None`; return a tensor to replace the activation
(same shape), or None to leave it. `hooks(adapter, {"L3.attn_z": fn})` installs them and removes
exactly its own handles when the block exits, also when the forward raises; contexts nest.

The vocabulary every edit shares: `Scope` says where it applies ("all", "last", "last:k",
"from:p", "prompt", "generated"; each consumer says which it takes), `SCALES` how a steering
vector is scaled ("abs": alpha * v, "rms": alpha * rms(h) * v). Reads say `pool` instead
(`Model.cache`). `legacy_scope` and `resolve_scale` accept the old spellings (`positions=`,
`rms=`) for one release, with a DeprecationWarning that names the new one.
"""
from __future__ import annotations

import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Protocol

import torch


class Modules(Protocol):
    """What `hooks` needs of a model: `emofast.models.Adapter` is one (sites sits below models)."""
    n_layers: int
    n_heads: int
    d_head: int
    parallel_residual: bool
    model_type: str

    def module(self, layer: int, part: str): ...


KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_z", "attn_out", "mlp_act", "mlp_out")
HookFn = Callable[[torch.Tensor, "Site"], "torch.Tensor | None"]
_PATTERN = re.compile(r"^L(\d+)\.([a-z_]+)$")


class Site(NamedTuple):
    layer: int
    kind: str

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}"


def parse_site(name: str | Site, n_layers: int | None = None) -> Site:
    """Parse "L12.mlp_act" into Site(12, "mlp_act"), validating kind and (if given) the layer."""
    if isinstance(name, Site):
        site = name
    else:
        m = _PATTERN.match(str(name).strip())
        if not m:
            raise ValueError(f"bad site name {name!r}: expected 'L<layer>.<kind>', e.g. 'L12.mlp_act'")
        site = Site(int(m.group(1)), m.group(2))
    if site.kind not in KINDS:
        raise ValueError(f"unknown site kind {site.kind!r} in {name!r}: one of {', '.join(KINDS)}")
    if n_layers is not None and not 0 <= site.layer < n_layers:
        raise ValueError(f"layer {site.layer} out of range: model has {n_layers} layers "
                         f"(0..{n_layers - 1})")
    return site


def sites_for(kind: str, layers: Iterable[int]) -> list[str]:
    """["L0.resid_post", "L1.resid_post", ...] for the given layers."""
    return [str(parse_site(f"L{layer}.{kind}")) for layer in layers]


def parse_layers(spec: str | Iterable[int], n_layers: int) -> list[int]:
    """Parse "all", "3", "0,4,8", "10-19" (inclusive) or an iterable; validates the range."""
    if isinstance(spec, str):
        layers: list[int] = []
        for part in spec.replace(" ", "").split(","):
            if part == "all":
                layers += range(n_layers)
            elif re.fullmatch(r"-?\d+-\d+", part) and not part.startswith("-"):
                lo, hi = map(int, part.split("-"))
                if lo > hi:
                    raise ValueError(f"bad layer range {part!r}: start after end")
                layers += range(lo, hi + 1)
            elif re.fullmatch(r"-?\d+", part):
                layers.append(int(part))
            else:
                raise ValueError(f"bad layer spec {part!r}: use 'all', '12', '0,4,8' or '10-19'")
    else:
        layers = [int(x) for x in spec]
    for layer in layers:
        parse_site(Site(layer, "resid_post"), n_layers)
    return layers


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


def _check_returned(new, act, site: Site) -> None:
    """A hook returns None or a tensor shaped like the activation it was given."""
    if not isinstance(new, torch.Tensor):
        raise TypeError(f"hook on {site} returned a {type(new).__name__}: return None (read "
                        f"only) or a tensor of shape {tuple(act.shape)}")
    if new.shape != act.shape:
        raise ValueError(f"hook on {site} returned shape {tuple(new.shape)}, "
                         f"expected {tuple(act.shape)}")


def _install(adapter: Modules, site: Site, fn: HookFn):
    """Register one hook on the module that carries `site`; returns the handle."""
    kind, layer = site.kind, site.layer
    if kind == "resid_mid" and adapter.parallel_residual:
        raise ValueError(f"{site}: {adapter.model_type} uses a parallel residual, so there is no "
                         "stream between attention and MLP; read resid_pre or attn_out instead")

    if kind in ("resid_pre", "attn_z", "mlp_act", "resid_mid"):
        part = {"resid_pre": "block", "attn_z": "attn_out_proj", "mlp_act": "mlp_down",
                "resid_mid": "mid_norm"}[kind]
        H, d_head = adapter.n_heads, adapter.d_head

        def pre_hook(module, args, kwargs):
            x = args[0]
            view = x.unflatten(-1, (H, d_head)) if kind == "attn_z" else x
            new = fn(view, site)
            if new is None:
                return None
            if kind == "resid_mid":
                raise ValueError(f"{site} is read-only: write attn_out of layer {layer} or "
                                 f"resid_pre of layer {layer + 1} instead")
            _check_returned(new, view, site)
            return (new.flatten(-2) if kind == "attn_z" else new,) + tuple(args[1:]), kwargs

        return adapter.module(layer, part).register_forward_pre_hook(pre_hook, with_kwargs=True)

    part = {"resid_post": "block", "attn_out": "attn_out", "mlp_out": "mlp_out"}[kind]

    def post_hook(module, args, output):
        x = _first(output)
        new = fn(x, site)
        if new is None:
            return None
        _check_returned(new, x, site)
        return _replace_first(output, new)

    return adapter.module(layer, part).register_forward_hook(post_hook)


@contextmanager
def hooks(adapter: Modules, mapping: Mapping[str, HookFn] | Iterable[tuple[str, HookFn]]
          ) -> Iterator[None]:
    """Install `{site: fn}` (or (site, fn) pairs, for several fns on one site, run in order)."""
    pairs = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    parsed = [(parse_site(name, adapter.n_layers), fn) for name, fn in pairs]  # validate first
    handles = []
    try:
        for site, fn in parsed:
            handles.append(_install(adapter, site, fn))
        yield
    finally:
        for h in handles:
            h.remove()


# ---- the one vocabulary: where an edit applies (Scope) and how a steer is scaled -------------
SCALES = ("abs", "rms")
_SCOPE_KINDS = ("all", "last", "from", "prompt", "generated")


@dataclass(frozen=True)
class Scope:
    """Where an edit applies, counted over each row's real (non-pad) tokens.

        Scope.parse("all")         every position of every forward
        Scope.parse("last")        the last position ("last:3": the last 3 positions)
        Scope.parse("from:5")      real tokens 5, 6, ... (0-based)
        Scope.parse("prompt")      only the forward over the prompt (generation)
        Scope.parse("generated")   only the forwards over generated tokens (generation)

    `kind` is one of all / last / from / prompt / generated; `n` is k for last (>= 1) and p for
    from (>= 0), 0 otherwise. Each consumer says which kinds it supports (`require`): sweeps and
    attribution take all, last, from:p; steering takes all, last:k, prompt, generated."""
    kind: str = "all"
    n: int = 0

    def __post_init__(self):
        if self.kind not in _SCOPE_KINDS:
            raise ValueError(f"unknown scope {self.kind!r}: one of all, last, last:K, from:P, "
                             "prompt, generated")
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise ValueError(f"scope {self.kind}: the count must be an int, got {self.n!r}")
        if self.kind == "last" and self.n < 1:
            raise ValueError(f"scope last:{self.n}: k must be >= 1")
        if self.kind == "from" and self.n < 0:
            raise ValueError(f"scope from:{self.n}: p must be >= 0 (real tokens from p)")
        if self.kind in ("all", "prompt", "generated") and self.n:
            raise ValueError(f"scope {self.kind} takes no count, got {self.n}")

    @classmethod
    def parse(cls, spec: "Scope | str") -> "Scope":
        """A Scope, or its spelling: "all", "last", "last:K", "from:P", "prompt", "generated"."""
        if isinstance(spec, Scope):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            raise ValueError(f"scope {spec}: an int is ambiguous, write 'from:{spec}' (real "
                             f"tokens from {spec}) or 'last:{spec}' (the last {spec} positions)")
        if not isinstance(spec, str):
            raise ValueError(f"scope must be a Scope or one of 'all', 'last', 'last:K', 'from:P', "
                             f"'prompt', 'generated'; got {spec!r}")
        kind, _, count = spec.strip().partition(":")
        if kind == "last" and not count:
            return cls("last", 1)
        if count:
            if kind not in ("last", "from") or not re.fullmatch(r"\d+", count):
                raise ValueError(f"bad scope {spec!r}: counts go with last:K and from:P, e.g. "
                                 "'last:3' or 'from:5'")
            return cls(kind, int(count))
        return cls(kind)

    @classmethod
    def last_k(cls, k: int = 1) -> "Scope":
        return cls("last", k)

    @classmethod
    def from_token(cls, p: int) -> "Scope":
        return cls("from", p)

    def __str__(self) -> str:
        if self.kind == "last":
            return "last" if self.n == 1 else f"last:{self.n}"
        return f"from:{self.n}" if self.kind == "from" else self.kind

    def require(self, where: str, *kinds: str) -> "Scope":
        """Self, or ValueError naming what `where` supports (kinds; "last" means last:1 only,
        "last:k" any k)."""
        if self.kind == "last":
            ok = "last:k" in kinds or (self.n == 1 and "last" in kinds)
        else:
            ok = self.kind in kinds
        if not ok:
            raise ValueError(f"{where} does not support scope {self}: use one of "
                             f"{', '.join(k if k != 'last:k' else 'last:K' for k in kinds)}")
        return self


def deprecated(message: str) -> None:
    """A DeprecationWarning attributed to the caller's own code: the first frame outside emofast
    and torch (decorators such as torch.inference_mode add frames), so Python's default filters
    show it in a user's script."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 = the frame that called this function
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
            "emofast", "torch"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def legacy_scope(positions, scope, *, where: str, int_means: str) -> Scope:
    """The Scope of a call that may still use the old `positions=` (deprecated for one release).

    int_means: what an int used to mean here, "from" (sweeps: real tokens >= p) or "last"
    (steering: the last k positions). The warning names the new spelling."""
    if positions is None:
        return Scope.parse("all" if scope is None else scope)
    if scope is not None:
        raise ValueError(f"{where}: give scope= only (positions= is its deprecated old name)")
    new = (Scope(int_means, positions) if isinstance(positions, int)
           and not isinstance(positions, bool) else Scope.parse(positions))
    deprecated(f"{where}(positions={positions!r}) is deprecated: use scope={str(new)!r}")
    return new


def resolve_scale(scale: str, rms: bool | None, *, where: str) -> str:
    """Check `scale` ("abs" | "rms"); `rms=` is its deprecated old spelling (one release)."""
    if rms is not None:
        if not isinstance(rms, bool):
            raise ValueError(f"{where}: rms must be a bool, got {rms!r}")
        if scale == "rms" and not rms:
            raise ValueError(f"{where}: scale='rms' and rms=False contradict each other: give "
                             "scale only (rms= is its deprecated old name)")
        new = "rms" if rms else "abs"
        deprecated(f"{where}(rms={rms}) is deprecated: use scale={new!r}")
        scale = new
    if scale not in SCALES:
        raise ValueError(f"{where}: scale must be 'abs' or 'rms', got {scale!r}")
    return scale
