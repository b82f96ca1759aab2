"""Emotion directions of Ekman's six from SEV prompts (arXiv 2510.11328), and the default
directions every command steers and projects with.

    dirs = sev_directions(model, load_skeletons("sev6", split="train"))     # group-centred
    dirs = default_directions(model)          # cached sev6 directions of this model
    dirs = default_directions(model, "out/dirs")                            # a saved folder

`sev_directions` has two sources. "instructed" is the paper's: the last token of "Always reply in
{emotion}" prompts. "expressed" (the default) reads the mean over a prefilled first-person
opening of the reply (data.EXPRESSION_OPENERS) after the uninstructed prompt: the state of
expressing the emotion. On SmolLM2-135M, which barely follows the instruction, "expressed"
steers far better (judge P(target) up to 0.9-1.0 for five emotions at alpha 1-1.5 with coherent
text, where "instructed" needed alpha 3-6 and produced degenerate text).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from ..data import EMOTIONS6, EXPRESSION_OPENERS, Skeleton, load_skeletons, sev_prompts
from ..models import Model
from ..models.embedded import cache_dir
from .activations import expressed_activations, prompt_activations
from .directions import EmotionDirections, diff_of_means


def sev_directions(model: Model, skeletons: Sequence[Skeleton], *, source: str = "expressed",
                   progress: bool = True, batch_size: int = 32) -> EmotionDirections:
    """Group-centred directions for Ekman's six emotions from SEV prompts (see module doc)."""
    if source == "instructed":
        prompts = sev_prompts(list(skeletons))
        acts = prompt_activations(model, prompts, batch_size=batch_size, progress=progress)
    elif source == "expressed":
        prompts = sev_prompts(list(skeletons), instructed=False, prefill=True)
        acts = expressed_activations(model, prompts, batch_size=batch_size, progress=progress)
    else:
        raise ValueError(f"source must be 'expressed' or 'instructed', got {source!r}")
    return diff_of_means(acts, [p.emotion for p in prompts], groups=[p.group for p in prompts],
                         emotions=list(EMOTIONS6), method=f"group_centred_{source}",
                         meta={"model": model.name, "source": source, "n_skeletons": len(skeletons)})


def cached_sev_directions(model: Model, skeletons: Sequence[Skeleton], *,
                          progress: bool = True) -> EmotionDirections:
    """`sev_directions`, computed once per model and skeleton set under $EMOFAST_CACHE."""
    weights = next(model.hf.parameters())
    ident = [model.name, model.hf.config.to_json_string(), str(weights.dtype),
             repr(EXPRESSION_OPENERS)] + [s.skeleton_id + s.scenario for s in skeletons]
    digest = hashlib.sha256("\n".join(ident).encode()).hexdigest()[:16]
    folder = cache_dir() / "directions" / f"{Path(model.name).name or 'model'}-{digest}"
    if (folder / "directions.safetensors").is_file():
        return EmotionDirections.load(folder)
    dirs = sev_directions(model, skeletons, progress=progress)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    dirs.save(tmp)
    os.replace(tmp, folder)  # atomic: a killed run leaves no half-written entry
    return dirs


def default_directions(model: Model, path: str | os.PathLike | None = None, *,
                       progress: bool = True) -> EmotionDirections:
    """The directions saved at `path` (a folder from `emofast directions`), else the model's
    sev6 directions from every train skeleton (cached): what the commands steer and project with
    unless told otherwise."""
    if path:
        return EmotionDirections.load(path)
    return cached_sev_directions(model, load_skeletons("sev6", split="train"), progress=progress)
