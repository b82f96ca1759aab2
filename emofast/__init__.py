"""emofast: find and control emotion circuits in Hugging Face causal language models.

    import emofast as ef
    model = ef.load_model()                                   # embedded SmolLM2-135M-Instruct
    acts = model.cache(texts, ef.sites_for("resid_post", range(model.n_layers)), pool="mean")
    res = ef.sweep(model, prompts, [[ef.Edit(3, "attn_z", [h])] for h in range(9)], ef.KL())

This module is the public API; the rooms behind it (emofast.sites, models, data, kernels,
analysis, interventions, sweeps, discovery, sae, quant, eval, pipelines, report, cli) are its
implementation. `ef.sweep` is the sweep function; its package is `emofast.sweeps`.
"""
from .analysis import (EmotionDirections, LinearProbe, cross_model_alignment, default_directions,
                       diff_of_means, emotion_pca, example_activations, fit_probe,
                       layer_separability, principal_angles, prompt_activations, sev_directions,
                       subspace_overlap, text_activations, unit_differences)
from .data import EMOTIONS6, load_dataset, load_skeletons, neutral_sentences, sev_prompts
from .discovery import (assemble_circuit, attribution_screen, discover_emotion, emotion_metrics,
                        importance_prompts, rank_neurons, sublayer_importance, unit_scores,
                        verify_top)
from .eval import EmotionJudge, distinct_n, lm_preservation, recognize, select_steering
from .interventions import (Circuit, FeatureSteering, Intervention, Modulation, Steering,
                            generate, load_steering)
from .models import DEFAULT_MODEL, Model, load_model
from .quant import quant_info, quantize
from .sae import SAE, SAETrainConfig, evaluate_sae, load_corpus, load_sae, save_sae, train_saes
from .sites import KINDS, Scope, Site, hooks, parse_layers, parse_site, sites_for
from .sweeps import (KL, Edit, FeatureEdit, LogitDiff, LogProb, ProbeProb, Projection, Steer, SweepResult,
                     Variant, steer_grid, sweep)

__all__ = ["DEFAULT_MODEL", "EMOTIONS6", "KINDS", "KL", "Circuit", "Edit", "EmotionDirections",
           "EmotionJudge", "FeatureEdit", "FeatureSteering", "Intervention", "LinearProbe", "LogProb", "LogitDiff", "Model",
           "Modulation", "ProbeProb", "Projection", "SAE", "SAETrainConfig", "Scope", "Site", "Steer", "Steering",
           "SweepResult", "Variant", "assemble_circuit", "attribution_screen",
           "cross_model_alignment", "default_directions", "diff_of_means", "discover_emotion",
           "distinct_n", "emotion_metrics", "emotion_pca", "evaluate_sae", "example_activations", "fit_probe",
           "generate", "hooks", "importance_prompts", "layer_separability", "lm_preservation",
           "load_corpus", "load_dataset", "load_model", "load_sae", "load_steering", "load_skeletons", "neutral_sentences", "parse_layers",
           "parse_site", "principal_angles", "prompt_activations", "quant_info", "quantize", "rank_neurons", "recognize",
           "save_sae", "select_steering", "sev_directions", "sev_prompts", "sites_for", "steer_grid",
           "sublayer_importance", "subspace_overlap", "sweep", "train_saes", "text_activations",
           "unit_differences", "unit_scores", "verify_top"]
__version__ = "0.1.0"
