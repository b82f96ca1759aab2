"""Sparse autoencoders on the fused kernels (tier 2): the `SAE` module, spliced into a model at
its site (`SAE.hook`), its folders in SAELens and sparsify formats (`load_sae`, `save_sae`) and
its evaluation on held-out text (`evaluate_sae`), training of many sites at once by TopK,
BatchTopK, ReLU + L1 or JumpReLU (`train_saes` on `load_corpus` documents)."""
from .corpus import load_corpus
from .evaluate import SAEEvaluation, evaluate_sae
from .formats import FORMATS, load_sae, load_sae_set, save_sae
from .model import ARCHITECTURES, NORMALIZATIONS, SAE
from .train import SAETrainConfig, SAETrainResult, train_saes

__all__ = ["ARCHITECTURES", "FORMATS", "NORMALIZATIONS", "SAE", "SAEEvaluation", "SAETrainConfig",
           "SAETrainResult", "evaluate_sae", "load_corpus", "load_sae", "load_sae_set", "save_sae", "train_saes"]
