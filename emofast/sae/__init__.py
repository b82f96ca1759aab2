"""Sparse autoencoders on the fused kernels (tier 2): the `SAE` module, spliced into a model at
its site (`SAE.hook`), its folders in SAELens and sparsify formats (`load_sae`, `save_sae`) and
its evaluation on held-out text (`evaluate_sae`). Training is to come (issue 10)."""
from .evaluate import SAEEvaluation, evaluate_sae
from .formats import FORMATS, load_sae, save_sae
from .model import ARCHITECTURES, NORMALIZATIONS, SAE

__all__ = ["ARCHITECTURES", "FORMATS", "NORMALIZATIONS", "SAE", "SAEEvaluation", "evaluate_sae",
           "load_sae", "save_sae"]
