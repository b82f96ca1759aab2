"""emofast.kernels: fused ops with three faces each (Triton on CUDA, C++ on CPU, torch reference).

Every public function takes `impl=None|"triton"|"cpp"|"torch"`; see `_dispatch` for the rule.
"""
from .masked_ablate import masked_ablate, masked_ablate_reference
from .sae_decode import sae_decode, sae_decode_reference
from .sae_encode import EncoderOutput, sae_encode, sae_encode_reference
from .steer_add import steer_add, steer_add_reference

__all__ = ["EncoderOutput", "masked_ablate", "masked_ablate_reference", "sae_decode",
           "sae_decode_reference", "sae_encode", "sae_encode_reference", "steer_add",
           "steer_add_reference"]
