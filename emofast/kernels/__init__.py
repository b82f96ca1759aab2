"""emofast.kernels: fused ops with three faces each (Triton on CUDA, C++ on CPU, torch reference).

    from emofast.kernels import masked_ablate, steer_add, sae_encode, sae_decode

Every public function takes `impl=None|"triton"|"cpp"|"torch"`; `dispatch` holds the rule. The
layout: `ops/<op>.py` (contract, checks, reference, the public function), `triton/<op>.py` (the
Triton kernels, imported only when they run: this package works without Triton), `cpp.py` (the
C++ extension's ops with their fake and autograd rules), `checks.py`, `autograd.py`.
"""
from .ops.masked_ablate import masked_ablate, masked_ablate_reference
from .ops.sae_decode import sae_decode, sae_decode_reference
from .ops.sae_encode import EncoderOutput, sae_encode, sae_encode_reference
from .ops.steer_add import steer_add, steer_add_reference

__all__ = ["EncoderOutput", "masked_ablate", "masked_ablate_reference", "sae_decode",
           "sae_decode_reference", "sae_encode", "sae_encode_reference", "steer_add",
           "steer_add_reference"]
