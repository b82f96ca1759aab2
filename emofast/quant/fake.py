"""Fake quantization of one weight: quantize, then dequantize, in the weight's own layout.

    w_hat = fake_quantize(w, parse_scheme("rtn:4:32"))      # w [out, in] -> same shape and dtype

Round-to-nearest (rtn) works on contiguous groups of g weights along the input dimension:
- symmetric: s = max|w| / (2^(k-1) - 1) rounded to fp16, q = clamp(round(w / s), -(2^(k-1) - 1),
  2^(k-1) - 1), w' = q s;
- asymmetric: s = (max - min) / (2^k - 1) and m = min, both rounded to fp16,
  q = clamp(round((w - m) / s), 0, 2^k - 1), w' = q s + m;
with torch.round (half to even), in fp32. A group whose scale is 0 in fp16 (all zero, or
constant under asymmetric) comes back as its minimum (0 for an all-zero group).
GGUF formats go through `gguf.quants.quantize` and `dequantize` (llama.cpp's reference math).
"""
from __future__ import annotations

import torch

from .schemes import Scheme, _gguf_type


def rtn(w: torch.Tensor, bits: int, group: int, symmetric: bool) -> torch.Tensor:
    """Round-to-nearest fake quantization of w [out, in] in groups of `group` along `in`."""
    out_f, in_f = w.shape
    if in_f % group:
        raise ValueError(f"group size {group} does not divide the input width {in_f}")
    x = w.detach().float().reshape(out_f, in_f // group, group)        # [out, n_groups, g]
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = (x.abs().amax(-1, keepdim=True) / qmax).half().float()
        safe = torch.where(s == 0, torch.ones_like(s), s)
        q = torch.clamp(torch.round(x / safe), -qmax, qmax)
        y = torch.where(s == 0, torch.zeros_like(x), q * s)
    else:
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        s = ((hi - lo) / (2 ** bits - 1)).half().float()
        m = lo.half().float()
        safe = torch.where(s == 0, torch.ones_like(s), s)
        q = torch.clamp(torch.round((x - m) / safe), 0, 2 ** bits - 1)
        y = torch.where(s == 0, m.expand_as(x), q * s + m)
    return y.reshape(out_f, in_f).to(w.dtype)


def gguf_roundtrip(w: torch.Tensor, name: str) -> torch.Tensor:
    """w [out, in] through a GGUF block format (blocks of 32 along `in`) and back."""
    import gguf

    in_f = w.shape[-1]
    if in_f % 32:
        raise ValueError(f"GGUF {name} needs the input width to be a multiple of 32, got {in_f}")
    kind = _gguf_type(name)
    x = w.detach().float().cpu().numpy()
    y = gguf.quants.dequantize(gguf.quants.quantize(x, kind), kind)
    return torch.from_numpy(y).reshape(w.shape).to(device=w.device, dtype=w.dtype)


def fake_quantize(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """w [out, in] quantized and dequantized by a simulated scheme (rtn or gguf)."""
    if scheme.family == "rtn":
        return rtn(w, scheme.bits, scheme.group, scheme.symmetric)
    if scheme.family == "gguf":
        return gguf_roundtrip(w, scheme.name)
    raise ValueError(f"{scheme} is a bitsandbytes scheme: it replaces modules, it has no fake "
                     "quantization (emofast.quant.quantize handles it)")
