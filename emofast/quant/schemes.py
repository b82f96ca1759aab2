"""Quantization schemes: one spelling in Python and on the command line.

    int8 | nf4 | fp4              bitsandbytes (LLM.int8 with per-row absmax; 4-bit NormalFloat /
                                  float in blocks of 64 with an fp32 absmax each)
    rtn:BITS:GROUP[:sym|asym]     simulated weight-only round-to-nearest, BITS in 2..8, contiguous
                                  groups of GROUP along each weight's input dimension (default
                                  asym for BITS <= 3, sym above)
    q4_0 | q4_1 | q5_0 | q8_0     GGUF block formats (blocks of 32 along the input dimension),
                                  through the `gguf` package's own quantize / dequantize

`parse_scheme("rtn:3:64")` -> Scheme; `str(scheme)` is its full spelling ("rtn:3:64:asym").
`bits_per_weight(in_features)` is the storage cost the format implies: the weight codes plus
their scales (and zero points / minima) per weight.
"""
from __future__ import annotations

from dataclasses import dataclass

BNB = ("int8", "nf4", "fp4")
GGUF = ("q4_0", "q4_1", "q5_0", "q8_0")
RTN_BITS = range(2, 9)
SPELLINGS = ("int8", "nf4", "fp4", "rtn:BITS:GROUP[:sym|asym]", *GGUF)
BNB_4BIT_BLOCK = 64          # bitsandbytes' 4-bit blocksize (transformers' default)


@dataclass(frozen=True)
class Scheme:
    family: str                  # "bnb" | "rtn" | "gguf"
    name: str                    # int8 / nf4 / fp4 | rtn | q4_0 / ...
    bits: int | None = None      # rtn only
    group: int | None = None     # rtn: group size; gguf: block size
    symmetric: bool | None = None

    def __str__(self) -> str:
        if self.family == "rtn":
            return f"rtn:{self.bits}:{self.group}:{'sym' if self.symmetric else 'asym'}"
        return self.name

    def bits_per_weight(self, in_features: int) -> float:
        """Bits each weight costs stored in this format (codes + per-group metadata)."""
        if self.family == "rtn":   # fp16 scale (+ fp16 minimum when asymmetric) per group
            return self.bits + (16 if self.symmetric else 32) / self.group
        if self.family == "gguf":
            import gguf
            block, nbytes = gguf.GGML_QUANT_SIZES[_gguf_type(self.name)]
            return nbytes * 8 / block
        if self.name == "int8":    # int8 codes + one fp32 absmax per output row
            return 8 + 32 / in_features
        return 4 + 32 / BNB_4BIT_BLOCK

    def to_json(self) -> dict:
        return {"scheme": str(self), "family": self.family, "bits": self.bits,
                "group": self.group, "symmetric": self.symmetric}


def parse_scheme(spec: "str | Scheme") -> Scheme:
    """The Scheme a spelling names (see the module docstring); a clear error otherwise."""
    if isinstance(spec, Scheme):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a scheme is a string such as 'rtn:4:32' or 'q4_0', got {spec!r}")
    s = spec.strip().lower()
    if s in BNB:
        return Scheme("bnb", s)
    if s in GGUF:
        return Scheme("gguf", s, group=32)
    if not s.startswith("rtn:"):
        raise ValueError(f"unknown scheme {spec!r}: one of {', '.join(SPELLINGS)}")
    parts = s.split(":")[1:]
    if len(parts) not in (2, 3):
        raise ValueError(f"scheme {spec!r}: spell it rtn:BITS:GROUP[:sym|asym], e.g. rtn:4:32")
    try:
        bits, group = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"scheme {spec!r}: BITS and GROUP must be integers "
                         "(rtn:BITS:GROUP[:sym|asym])") from None
    if bits not in RTN_BITS:
        raise ValueError(f"scheme {spec!r}: bits {bits} out of range (2..8)")
    if group < 1:
        raise ValueError(f"scheme {spec!r}: group size must be >= 1, got {group}")
    if len(parts) == 3 and parts[2] not in ("sym", "asym"):
        raise ValueError(f"scheme {spec!r}: the last field is sym or asym, got {parts[2]!r}")
    symmetric = parts[2] == "sym" if len(parts) == 3 else bits > 3
    return Scheme("rtn", "rtn", bits, group, symmetric)


def _gguf_type(name: str):
    import gguf
    return getattr(gguf.GGMLQuantizationType, name.upper())
