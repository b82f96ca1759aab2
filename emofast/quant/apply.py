"""`quantize(model, scheme, layers=None, modules=None) -> Model`: a quantized copy of a model.

    q = ef.quantize(model, "rtn:3:64", layers=range(20, 30), modules=["mlp"])
    q.hf.emofast_quantization     # scheme, layers, modules, bytes and bits per weight (QuantInfo)

The reference is never touched: its HF module is deep-copied, then the chosen weights are
replaced. Module kinds, per chosen layer (default: attn and mlp, every layer):
    attn    every linear layer of the block's attention (q, k, v and output projections)
    mlp     every linear layer of the block's MLP (gate, up, down)
    down    the MLP down-projection only
    embed   the token embedding and the unembedding (tied in SmolLM2: one tensor); not in a
            layer, so `layers` must be None; its own arm
Simulated schemes (rtn, gguf) write dequantized weights into the copy's ordinary modules, so
every emofast analysis and sweep runs on the result unchanged; bitsandbytes schemes replace the
chosen nn.Linear modules by Linear8bitLt / Linear4bit (CPU and CUDA), the rest left as they are
(the skip-modules pattern of transformers' loader).

Bytes: `bytes_quantized` is what the changed weights take in the scheme's format
(`Scheme.bits_per_weight`), `bytes_reference` the same weights at the reference's dtype,
`bytes_model` the whole model with the changed weights quantized and the rest as they were.
`matched_noise(reference, quantized)` is the Gaussian control: each changed weight gets i.i.d.
noise of the RMS of its own quantization error instead.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from ..models import Model
from ..models.adapters import _dequantize
from ..sites import parse_layers
from .fake import fake_quantize
from .schemes import Scheme, parse_scheme

MODULE_KINDS = ("attn", "mlp", "down", "embed")
DEFAULT_MODULES = ("attn", "mlp")


@dataclass
class QuantInfo:
    scheme: str
    layers: list[int] | None           # None: no layer (embed arm)
    modules: list[str]
    changed: list[str]                 # names of the changed weight tensors
    n_weights: int
    bits_per_weight: float | None      # over the changed weights (None: noise control)
    bytes_quantized: float
    bytes_reference: int
    bytes_model: float
    first_layer: int                   # lowest layer whose output changes (prefix reuse below)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def quant_info(model: Model) -> QuantInfo | None:
    """The QuantInfo of a model `quantize` or `matched_noise` made (None for any other)."""
    own = getattr(model.hf, "emofast_quantization", None)
    return None if own is None else QuantInfo(**own)


def _linears(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{n}", m) for n, m in module.named_modules()
            if isinstance(m, nn.Linear) or type(m).__name__ in ("Conv1D", "Linear8bitLt",
                                                                 "Linear4bit")]


def check_modules(modules: "str | Sequence[str] | None") -> list[str]:
    """Module kinds as a list ("attn,mlp" or a sequence; None: the default attn + mlp)."""
    if modules is None:
        return list(DEFAULT_MODULES)
    kinds = [m.strip() for m in modules.split(",")] if isinstance(modules, str) else list(modules)
    bad = [m for m in kinds if m not in MODULE_KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown module kind(s) {bad or kinds}: some of {', '.join(MODULE_KINDS)}")
    return sorted(set(kinds), key=MODULE_KINDS.index)


def targets(model: Model, layers: "Iterable[int] | str | None", modules) -> tuple[
        list[int] | None, list[str], list[tuple[str, nn.Module]]]:
    """(layers, kinds, [(qualified name, module)]) the arm changes, checked."""
    kinds = check_modules(modules)
    a = model.adapter
    if "embed" in kinds:
        if layers is not None:
            raise ValueError("the embedding is in no layer: quantize modules=['embed'] with "
                             "layers=None, as its own arm")
        if len(kinds) > 1:
            raise ValueError(f"embed is its own arm: give modules=['embed'] alone, not {kinds}")
        found, seen = [], set()
        names = {id(m): n for n, m in model.hf.named_modules()}
        for m in (model.hf.get_input_embeddings(), model.hf.get_output_embeddings()):
            if m is not None and id(m.weight) not in seen:   # tied: one tensor, once
                seen.add(id(m.weight))
                found.append((names[id(m)], m))
        return None, kinds, found
    chosen = list(range(a.n_layers)) if layers is None else parse_layers(
        layers if isinstance(layers, str) else list(layers), a.n_layers)
    if not chosen:
        raise ValueError("layers is empty: give at least one layer (or None for all)")
    attn = a.spec.attn_out_proj.split(".")[0]
    mlp = a.spec.mlp_down.split(".")[0]
    found = []
    for layer in chosen:
        block, pre = a.blocks[layer], f"{a.spec.layers}.{layer}"
        mods = {}
        if "attn" in kinds:
            mods.update(_linears(block.get_submodule(attn), f"{pre}.{attn}"))
        if "mlp" in kinds:
            mods.update(_linears(block.get_submodule(mlp), f"{pre}.{mlp}"))
        if "down" in kinds:
            mods[f"{pre}.{a.spec.mlp_down}"] = a.module(layer, "mlp_down")
        found += sorted(mods.items())
    return chosen, kinds, found


def weight_out_in(m: nn.Module) -> torch.Tensor:
    """The module's weight as a dense [out, in] tensor (GPT-2's Conv1D stores [in, out];
    bitsandbytes layers are dequantized)."""
    w = m.weight
    if type(w).__name__ in ("Params4bit", "Int8Params"):
        return _dequantize(m)
    return w.detach().T if type(m).__name__ == "Conv1D" else w.detach()


def _set_weight(m: nn.Module, w_out_in: torch.Tensor) -> None:
    with torch.no_grad():
        m.weight.copy_(w_out_in.T if type(m).__name__ == "Conv1D" else w_out_in)


def _check_widths(scheme: Scheme, found) -> None:
    if scheme.family == "bnb":
        return
    widths = {name: weight_out_in(m).shape[1] for name, m in found}
    g = scheme.group
    bad = [(n, w) for n, w in widths.items() if w % g]
    if bad:
        common = math.gcd(*widths.values())
        ok = [d for d in range(1, common + 1) if common % d == 0 and d >= 8]
        raise ValueError(f"{scheme}: group size {g} does not divide the input width {bad[0][1]} "
                         f"of {bad[0][0]}; group sizes that divide every targeted width: "
                         f"{', '.join(map(str, ok)) or '(none >= 8)'}")


def check_arm(model: Model, scheme: "str | Scheme", layers=None, modules=None):
    """(scheme, layers, kinds, targets) of a quantization, every error raised before any copy."""
    scheme = parse_scheme(scheme)
    chosen, kinds, found = targets(model, layers, modules)
    if scheme.family == "bnb" and "embed" in kinds:
        raise ValueError(f"{scheme} (bitsandbytes) quantizes nn.Linear layers only: quantize "
                         "the embedding with a simulated scheme (rtn:..., q8_0, ...)")
    _check_widths(scheme, found)
    return scheme, chosen, kinds, found


def quantize(model: Model, scheme: "str | Scheme", layers: "Iterable[int] | str | None" = None,
             modules: "str | Sequence[str] | None" = None) -> Model:
    """A new Model: `model` with the chosen weights quantized by `scheme` (module docstring)."""
    scheme, chosen, kinds, found = check_arm(model, scheme, layers, modules)
    names = [n for n, _ in found]
    hf = copy.deepcopy(model.hf)
    bits, n_w, bytes_ref = 0.0, 0, 0
    for name in names:
        m = hf.get_submodule(name)
        w = weight_out_in(m)
        n_w += w.numel()
        bytes_ref += w.numel() * m.weight.element_size()
        bits += w.numel() * scheme.bits_per_weight(w.shape[1])
        if scheme.family == "bnb":
            _replace_bnb(hf, name, m, w, scheme)
        else:
            _set_weight(m, fake_quantize(w, scheme))
    out = Model(hf, model.tokenizer, name=model.name)
    _mark(out, model, QuantInfo(str(scheme), chosen, kinds, names, n_w, bits / n_w, bits / 8,
                                bytes_ref, 0.0, 0 if chosen is None else min(chosen)))
    return out


def matched_noise(reference: Model, quantized: Model, seed: int = 0) -> Model:
    """The Gaussian control of a quantized arm: a copy of `reference` where each weight the arm
    changed gets i.i.d. N(0, sigma^2) noise, sigma the RMS of that weight's quantization error."""
    info = quant_info(quantized)
    if info is None:
        raise ValueError("matched_noise needs a model made by emofast.quant.quantize")
    gen = torch.Generator().manual_seed(seed)
    hf = copy.deepcopy(reference.hf)
    sigmas = {}
    for name in info.changed:
        w = weight_out_in(reference.hf.get_submodule(name)).float()
        err = weight_out_in(quantized.hf.get_submodule(name)).float() - w
        sigma = float(err.pow(2).mean().sqrt())
        noise = torch.randn(w.shape, generator=gen) * sigma
        m = hf.get_submodule(name)
        _set_weight(m, (w + noise.to(w.device)).to(m.weight.dtype))
        sigmas[name] = sigma
    out = Model(hf, reference.tokenizer, name=reference.name)
    _mark(out, reference, QuantInfo(f"noise~{info.scheme}", info.layers, info.modules,
                                    info.changed, info.n_weights, None, info.bytes_reference,
                                    info.bytes_reference, 0.0, info.first_layer,
                                    {"seed": seed, "sigma": sigmas}))
    return out


def _mark(out: Model, reference: Model, info: QuantInfo) -> None:
    total = sum(p.numel() * p.element_size() for p in {id(p): p for p in
                                                        reference.hf.parameters()}.values())
    info.bytes_model = total - info.bytes_reference + info.bytes_quantized
    out.hf.emofast_quantization = info.to_json()


def _replace_bnb(hf: nn.Module, name: str, m: nn.Module, w: torch.Tensor, scheme: Scheme) -> None:
    """Swap module `name` for the bitsandbytes layer of `scheme` holding weight w [out, in]."""
    import bitsandbytes as bnb

    out_f, in_f = w.shape
    bias = m.bias is not None
    dev, dtype = w.device, m.weight.dtype
    if scheme.name == "int8":
        new = bnb.nn.Linear8bitLt(in_f, out_f, bias=bias, has_fp16_weights=False)
        new.weight = bnb.nn.Int8Params(w.detach().to(torch.float16 if dev.type == "cuda"
                                                     else dtype).cpu().clone(),
                                       requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=dtype,
                                quant_type=scheme.name)
        new.weight = bnb.nn.Params4bit(w.detach().cpu().clone(), requires_grad=False,
                                       quant_type=scheme.name, blocksize=64)
    if bias:
        new.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
    new = new.to(dev)                     # quantizes the weight on its device
    parent, _, child = name.rpartition(".")
    setattr(hf.get_submodule(parent), child, new)
