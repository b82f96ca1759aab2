"""emofast.discovery: which neurons, heads and sublayers carry an emotion.

    ranking = rank_neurons(model, dirs, "fear", acts=acts)          # along the direction
    attr = attribution_screen(model, prompts, LogitDiff(a, b))      # every unit, one backward
    check = verify_top(model, prompts, attr, LogitDiff(a, b), k=32)  # exact, through sweeps
    imp = sublayer_importance(model, prompts, emotion_metrics(model))
    circuit = assemble_circuit(*unit_scores(model, dirs, diffs, "fear"), 64, 8)
    d = discover_emotion(model, prompts, metric, dirs, "fear")      # all of it for one emotion
"""
from .attribution import Attribution, Verification, attribution_screen, spearman, verify_top
from .circuits import (EMOTION_WORDS, SublayerImportance, assemble_circuit, emotion_metrics,
                       importance_prompts, sublayer_importance, unit_scores)
from .emotion import EmotionDiscovery, discover_emotion
from .neurons import NeuronRanking, rank_neurons

__all__ = ["EMOTION_WORDS", "Attribution", "EmotionDiscovery", "NeuronRanking",
           "SublayerImportance", "Verification", "assemble_circuit", "attribution_screen",
           "discover_emotion", "emotion_metrics", "importance_prompts", "rank_neurons",
           "spearman", "sublayer_importance", "unit_scores", "verify_top"]
