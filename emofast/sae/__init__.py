"""Sparse autoencoders on the fused kernels (tier 2): the `SAE` module, spliced into a model at
its site (`SAE.hook`). Formats, training and evaluation are to come (issue 10)."""
from .model import ARCHITECTURES, NORMALIZATIONS, SAE

__all__ = ["ARCHITECTURES", "NORMALIZATIONS", "SAE"]
