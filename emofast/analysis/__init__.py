"""emofast.analysis: read-only questions about a model's activations.

    acts = example_activations(model, load_dataset("basic4"))         # [L, N, d_model]
    dirs = diff_of_means(acts, labels, baseline="neutral")            # EmotionDirections
    sep = layer_separability(train_acts, train_y, test_acts, test_y)  # probe accuracy per layer
    pca = emotion_pca(acts[12], n_components=3)                       # the emotion subspace
    report = cross_model_alignment(neutral_x, neutral_y, dirs_x, dirs_y)
    diffs = unit_differences(model, skeletons)                        # per-unit emotion shifts

Rooms: activations (datasets -> stacks), directions (difference of means, the container),
sev (Ekman's six from SEV prompts; the default directions), probes (logistic probes,
separability), geometry (PCA, subspaces, alignment), units (per-unit emotion differences).
"""
from .activations import (example_activations, expressed_activations, expressed_texts,
                          prompt_activations, text_activations)
from .directions import EmotionDirections, diff_of_means, project, subtract_group_means
from .geometry import (Alignment, AlignmentStats, CrossModelAlignment, PCAResult,
                       cross_model_alignment, emotion_pca, fit_alignment, principal_angles,
                       subspace_of, subspace_overlap)
from .probes import (LayerSeparability, LinearProbe, Split, centroid_classify, fit_logistic,
                     fit_probe, layer_separability, train_test_split)
from .sev import cached_sev_directions, default_directions, sev_directions
from .units import UnitDifferences, unit_differences

__all__ = ["Alignment", "AlignmentStats", "CrossModelAlignment", "EmotionDirections",
           "LayerSeparability", "LinearProbe", "PCAResult", "Split", "UnitDifferences",
           "cached_sev_directions", "centroid_classify", "cross_model_alignment",
           "default_directions", "diff_of_means", "emotion_pca", "example_activations",
           "expressed_activations", "expressed_texts", "fit_alignment", "fit_logistic",
           "fit_probe", "layer_separability", "principal_angles", "project",
           "prompt_activations", "sev_directions", "subspace_of", "subspace_overlap",
           "subtract_group_means", "text_activations", "train_test_split", "unit_differences"]
