"""Sparse autoencoders on the fused kernels (tier 2): the `SAE` module, spliced into a model at
its site (`SAE.hook`), and its folders in SAELens and sparsify formats (`load_sae`, `save_sae`).
Training and evaluation are to come (issue 10)."""
from .formats import FORMATS, load_sae, save_sae
from .model import ARCHITECTURES, NORMALIZATIONS, SAE

__all__ = ["ARCHITECTURES", "FORMATS", "NORMALIZATIONS", "SAE", "load_sae", "save_sae"]
