"""Site names and the one hook context manager.

A site is a place in the forward pass you can read or write, named "L{layer}.{kind}":

    resid_pre   [B, T, d_model]     residual stream entering layer L
    resid_mid   [B, T, d_model]     between attention and MLP (read-only; absent with Pythia's
                                    parallel residual, where attention and MLP share resid_pre)
    resid_post  [B, T, d_model]     residual stream leaving layer L
    attn_z      [B, T, H, d_head]   per-head attention output before the output projection
    attn_out    [B, T, d_model]     attention output (after the output projection)
    mlp_act     [B, T, d_mlp]       MLP activation before the down-projection
    mlp_out     [B, T, d_model]     MLP output

One hook signature: `fn(act, site) -> Tensor | None`; return a tensor to replace the activation
(same shape), or None to leave it. `hooks(adapter, {"L3.attn_z": fn})` installs them and removes
exactly its own handles when the block exits, also when the forward raises; contexts nest.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, NamedTuple

import torch

if TYPE_CHECKING:
    from .models.adapters import Adapter

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


def _install(adapter: "Adapter", site: Site, fn: HookFn):
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
            if new.shape != view.shape:
                raise ValueError(f"hook on {site} returned shape {tuple(new.shape)}, "
                                 f"expected {tuple(view.shape)}")
            return (new.flatten(-2) if kind == "attn_z" else new,) + tuple(args[1:]), kwargs

        return adapter.module(layer, part).register_forward_pre_hook(pre_hook, with_kwargs=True)

    part = {"resid_post": "block", "attn_out": "attn_out_proj", "mlp_out": "mlp_down"}[kind]

    def post_hook(module, args, output):
        x = _first(output)
        new = fn(x, site)
        if new is None:
            return None
        if new.shape != x.shape:
            raise ValueError(f"hook on {site} returned shape {tuple(new.shape)}, "
                             f"expected {tuple(x.shape)}")
        return _replace_first(output, new)

    return adapter.module(layer, part).register_forward_hook(post_hook)


@contextmanager
def hooks(adapter: "Adapter", mapping: Mapping[str, HookFn] | Iterable[tuple[str, HookFn]]
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
