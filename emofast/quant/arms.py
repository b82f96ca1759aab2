"""The arms of a brittleness profile: which scheme hits which layers and modules.

    arms = standard_arms(30, bits=(2, 3, 4), headline=3, group=32, n_random=20)

Kinds: "null_check" (q4_1 everywhere: the embedded weights are already Q4_1, so KL ~ 0),
"region" (early / middle / late thirds of the layers, at every k), "window" (sliding windows at
the headline k), "single" (one layer at the headline k), "module" (one module kind, every layer,
headline k), "whole" (attn + mlp everywhere: each k, the GGUF formats and bitsandbytes),
"random" (the null: random layer sets of a third's size at the headline k, seeded), and the
Gaussian controls (kind "noise", one per region at the headline k, built from that arm).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Sequence

from .schemes import BNB, GGUF, parse_scheme

REGIONS = ("early", "middle", "late")


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str
    scheme: str
    layers: tuple[int, ...] | None         # None: every layer (or no layer: the embed arm)
    modules: tuple[str, ...] = ("attn", "mlp")
    region: str | None = None
    bits: int | None = None
    noise_of: str | None = None            # kind "noise": the arm whose error it matches

    def to_json(self) -> dict:
        return asdict(self)


def thirds(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Early / middle / late thirds of the layers (the remainder goes to the later thirds)."""
    cut = [0, n_layers // 3, n_layers - (n_layers - n_layers // 3) // 2, n_layers]
    return {r: tuple(range(cut[i], cut[i + 1])) for i, r in enumerate(REGIONS)}


def rtn_spelling(bits: int, group: int) -> str:
    return str(parse_scheme(f"rtn:{bits}:{group}"))


def standard_arms(n_layers: int, *, bits: Sequence[int] = (2, 3, 4), headline: int = 3,
                  group: int = 32, n_random: int = 20, window: int | None = None,
                  stride: int | None = None, singles: Sequence[int] | None = None,
                  modules: Sequence[str] = ("attn", "mlp", "down", "embed"),
                  formats: Sequence[str] = ("q4_0", "q5_0", "q8_0", *BNB),
                  noise: bool = True, seed: int = 0) -> list[Arm]:
    """The arms of the module docstring. window/stride default to a sixth of the depth;
    singles to every layer."""
    if headline not in bits:
        raise ValueError(f"the headline bit width {headline} must be one of bits {tuple(bits)}")
    bad = [f for f in formats if f not in GGUF + BNB]
    if bad:
        raise ValueError(f"formats {bad}: each one of {', '.join(GGUF + BNB)}")
    h = rtn_spelling(headline, group)
    arms = [Arm("null check q4_1", "null_check", "q4_1", None)]
    regions = thirds(n_layers)
    for k in bits:
        for r, layers in regions.items():
            arms.append(Arm(f"{r} rtn{k}", "region", rtn_spelling(k, group), layers, region=r,
                            bits=k))
    if noise:
        arms += [Arm(f"{r} noise~rtn{headline}", "noise", h, regions[r], region=r,
                     bits=headline, noise_of=f"{r} rtn{headline}") for r in REGIONS]
    window = window or max(1, n_layers // 6)
    stride = stride or window
    for start in range(0, n_layers - window + 1, stride):
        layers = tuple(range(start, start + window))
        arms.append(Arm(f"window L{start}-{start + window - 1} rtn{headline}", "window", h,
                        layers, bits=headline))
    for layer in (range(n_layers) if singles is None else singles):
        arms.append(Arm(f"single L{layer} rtn{headline}", "single", h, (layer,), bits=headline))
    for m in modules:
        arms.append(Arm(f"{m} rtn{headline}", "module", h, None, (m,), bits=headline))
    for k in bits:
        arms.append(Arm(f"whole rtn{k}", "whole", rtn_spelling(k, group), None, bits=k))
    for f in formats:
        arms.append(Arm(f"whole {f}", "whole", f, None))
    size = len(regions["late"])
    rng = random.Random(seed)
    seen = {tuple(v) for v in regions.values()}
    for i in range(n_random):
        for _ in range(1000):
            layers = tuple(sorted(rng.sample(range(n_layers), size)))
            if layers not in seen:
                break
        seen.add(layers)
        arms.append(Arm(f"random {i} rtn{headline}", "random", h, layers, bits=headline))
    return arms
