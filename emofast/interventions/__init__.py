"""emofast.interventions: everything that edits the forward pass, behind one protocol.

    from emofast.interventions import Steering, Modulation, generate
    texts = generate(model, prompts, intervention=Steering.single(dirs, "fear", range(12, 18), 1.5))

`Intervention` (base.py) is the protocol that `generate`, `emofast.eval.lm_preservation` and
sweep variants accept; `Steering` adds emotion directions to the residual stream, `Modulation`
shifts a circuit's units, `FeatureSteering` scales SAE features where they fire.
"""
from .base import Intervention, PerRow
from .features import FeatureSteering, load_steering
from .generation import generate
from .modulation import Circuit, Modulation
from .steering import Steering

__all__ = ["Circuit", "FeatureSteering", "Intervention", "Modulation", "PerRow", "Steering",
           "generate", "load_steering"]
