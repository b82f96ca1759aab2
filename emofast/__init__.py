"""emofast: find and control emotion circuits in Hugging Face causal language models.

    import emofast as ef
    model = ef.load_model()                                   # embedded SmolLM2-135M-Instruct
    acts = model.cache(texts, ef.sites_for("resid_post", range(model.n_layers)))
"""
from .data import EMOTIONS6, load_dataset, load_skeletons, sev_prompts
from .models import DEFAULT_MODEL, Model, load_model
from .sites import KINDS, Site, hooks, parse_layers, parse_site, sites_for

__all__ = ["DEFAULT_MODEL", "EMOTIONS6", "KINDS", "Model", "Site", "hooks", "load_dataset",
           "load_model", "load_skeletons", "parse_layers", "parse_site", "sev_prompts", "sites_for"]
__version__ = "0.1.0"
