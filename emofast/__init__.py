"""emofast: find and control emotion circuits in Hugging Face causal language models.

    import emofast as ef
    model = ef.load_model()                                   # embedded SmolLM2-135M-Instruct
    acts = model.cache(texts, ef.sites_for("resid_post", range(model.n_layers)))
    res = ef.sweep(model, prompts, [[ef.Edit(3, "attn_z", [h])] for h in range(9)], ef.KL())

`ef.sweep` is the sweep function; its module is `emofast.sweep` (`from emofast.sweep import ...`).
"""
from .data import EMOTIONS6, load_dataset, load_skeletons, sev_prompts
from .models import DEFAULT_MODEL, Model, load_model
from .planner import Edit, Variant
from .sites import KINDS, Site, hooks, parse_layers, parse_site, sites_for
from .sweep import (KL, LogitDiff, LogProb, ProbeProb, Projection, Steer, SweepResult, steer_grid,
                    sweep)

__all__ = ["DEFAULT_MODEL", "EMOTIONS6", "KINDS", "KL", "Edit", "LogProb", "LogitDiff", "Model",
           "ProbeProb", "Projection", "Site", "Steer", "SweepResult", "Variant", "hooks",
           "load_dataset", "load_model", "load_skeletons", "parse_layers", "parse_site",
           "sev_prompts", "sites_for", "steer_grid", "sweep"]
__version__ = "0.1.0"
