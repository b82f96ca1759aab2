"""emofast.sweeps: prompts x variants x metric, exact, thousands of variants per forward.

    from emofast.sweeps import Edit, KL, Steer, sweep
    res = sweep(model, prompts, [[Edit(3, "attn_z", [h])] for h in range(9)], KL(), scope="last")

Rooms: `api` (sweep, validation), `plan` (the C++ planner's Python face), `batched` and `loop`
(the engines), `clean` (the shared clean pass), `batches`, `metrics`, `steer` (Steer variants),
`features` (SAE feature edits),
`store` (the resumable output folder), `specs` (the command line's spellings of variants,
metrics and prompts).
"""
from .api import SweepResult, sweep
from .batches import encode_batches
from .features import FeatureEdit
from .metrics import KL, LogitDiff, LogProb, Metric, ProbeProb, Projection, Readout
from .plan import Edit, Variant, plan_sweep
from .steer import Steer, steer_grid

__all__ = ["KL", "Edit", "FeatureEdit", "LogProb", "LogitDiff", "Metric", "ProbeProb",
           "Projection", "Readout", "Steer", "SweepResult", "Variant", "encode_batches", "plan_sweep", "steer_grid",
           "sweep"]
