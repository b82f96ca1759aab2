"""Quantization schemes and the brittleness profile (tier 2).

    q = quantize(model, "rtn:3:64", layers=range(20, 30), modules=["mlp"])   # a new Model
    quant_info(q).bits_per_weight
"""
from .apply import MODULE_KINDS, QuantInfo, matched_noise, quant_info, quantize
from .fake import fake_quantize, gguf_roundtrip, rtn
from .schemes import Scheme, parse_scheme

__all__ = ["MODULE_KINDS", "QuantInfo", "Scheme", "fake_quantize", "gguf_roundtrip",
           "matched_noise", "parse_scheme", "quant_info", "quantize", "rtn"]
